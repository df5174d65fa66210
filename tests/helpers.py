"""Helpers that several test modules share: small models, files and stage runs."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from mnistpipe.data.datasets import DATASETS
from mnistpipe.deploy.onnx_model import LOGITS, OOD_SCORE, PROBABILITIES, Metadata
from mnistpipe.files import sha256_file, write_bytes_atomic
from mnistpipe.modeling.checkpoints import Checkpoint, save_checkpoint
from mnistpipe.modeling.models import MODELS, build_model
from stages.evaluate import OUTPUTS
from stages.export import export_bytes
from tests.conftest import RECIPE, REPO, SMALL_CNN

CLASSES = tuple("0123456789")


def ran(result: subprocess.CompletedProcess) -> set[str]:
    """The stages that a `dvc repro` (`--dry` too) or `dvc exp run` ran."""
    return set(re.findall(r"^Running stage '([\w-]+)':", result.stdout, re.MULTILINE))


def other_model_sections(spelled_out: tuple[str, ...] = ("cnn", "mlp", "examples-cnn")) -> str:
    """The `model` section's lines for the registered models a hand-written params file does
    not spell out (such as one added by docs/guides/add-a-model.md), with their defaults:
    a params file names every model's config."""
    return "".join(
        f"  {name}: {json.dumps(spec.config().to_mapping())}\n"
        for name, spec in MODELS.items()
        if name not in spelled_out
    )


def choices(names) -> str:
    """Registry names as pydantic lists a Literal's choices: 'a', 'b' or 'c'."""
    names = [repr(name) for name in names]
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


# The web server's section, which no stage reads: the same in every hand-written params file.
SERVE_SECTION = """\
serve:
  host: 127.0.0.1
  port: 8000
  max_upload_mb: 5.0
  max_batch: 64
  batch_wait_ms: 2.0
"""

PARAMS = (
    """
seed: 3
data:
  dataset: mnist
download:
  sources: [local]
  local_dir: {local_dir}
preprocess:
  val_size: 40
  subset: 0
model:
  name: cnn
  cnn:
    channels: [4, 8]
    convs: [1, 1]
    dropout: 0.0
  mlp:
    hidden: [16]
    dropout: 0.0
  examples-cnn: {{}}
{other_models}train:
  epochs: 2
  batch_size: 32
  optimizer: sgd
  lr: 0.05
  momentum: 0.9
  weight_decay: 0.0005
  schedule: one-cycle
  step_gamma: 0.7
  label_smoothing: 0.1
  augment_rotate: 10.0
  augment_shift: 2.0
  augment_scale: 0.1
  augment_blur: 0.0
  outliers_per_batch: 0
  outlier_images: 100
  outlier_weight: 0.5
  ood_rejection: 0.01
runtime:
  device: auto
  threads: 1
  numerics: portable
export:
  opset: 20
  tolerance: 1.0e-4
evaluate:
  batch_size: 16
  photos: 2
  numbers: 2
  non_digit_share: 0.1
report:
  misclassified_shown: 16
  samples_shown: 8
  confused_pairs: 3
  weakest_classes: 3
"""
    + SERVE_SECTION
)


NUMERICS = {"train": "portable", "evaluate": "portable"}  # as PARAMS, and dvc.yaml's commands


def stage(name, *args, launched=True):
    """A stage as dvc.yaml runs it: the computing ones through the numerics launcher."""
    launcher = (
        ["-m", "mnistpipe.modeling.numerics", NUMERICS[name]] if name in NUMERICS else ["-m"]
    )
    launcher = launcher if launched else ["-m"]
    command = [sys.executable, *launcher, f"stages.{name}", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


def params_text(local_dir, **replace) -> str:
    """PARAMS for the idx files in `local_dir`, with each `old=new` text replacement made."""
    text = textwrap.dedent(PARAMS.format(local_dir=local_dir, other_models=other_model_sections()))
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def params_file(tmp_path, raw_dir, **replace):
    path = tmp_path / "params.yaml"
    path.write_text(params_text(raw_dir, **replace))
    return path


def evaluate_paths(out: Path) -> dict[str, Path]:
    """Where `run_chain` has evaluate write each of its outputs (OUTPUTS) in `out`."""
    return {name: out / f"{name}.out" for name in OUTPUTS}


def run_chain(tmp_path, raw_dir, params, run):
    """preprocess, train, export and evaluate into tmp_path/run; return the evaluate outputs."""
    out = tmp_path / run
    data = out / "processed"
    assert (
        stage(
            "preprocess",
            "--raw",
            raw_dir,
            "--out",
            data,
            "--counts",
            out / "counts.csv",
            "--params",
            params,
        ).returncode
        == 0
    )
    result = stage(
        "train",
        "--data",
        data,
        "--model",
        out / "model.pt",
        "--history",
        out / "history.csv",
        "--live",
        out / "live",
        "--params",
        params,
    )
    assert result.returncode == 0, result.stderr
    result = stage(
        "export",
        "--model",
        out / "model.pt",
        "--data",
        data,
        "--out",
        out / "model.onnx",
        "--params",
        params,
    )
    assert result.returncode == 0, result.stderr
    paths = evaluate_paths(out)
    flags = [item for name in OUTPUTS for item in (f"--{name}", paths[name])]
    result = stage(
        "evaluate", "--data", data, "--model", out / "model.pt", *flags, "--params", params
    )
    assert result.returncode == 0, result.stderr
    return out, paths


def exported(folder, dataset: str = "mnist", temperature: float = 1.7):
    """(ONNX path, checkpoint) of a random small CNN, as the export stage writes it."""
    torch.manual_seed(0)
    model = build_model("cnn", SMALL_CNN, mean=0.13, std=0.31)
    classes = DATASETS[dataset].classes
    checkpoint = Checkpoint(
        "cnn", SMALL_CNN, RECIPE, model.state_dict(), dataset, classes, 1, 0.5, temperature
    )
    save_checkpoint(folder / "model.pt", checkpoint)
    onnx_bytes = export_bytes(checkpoint, sha256_file(folder / "model.pt"), opset=20)
    write_bytes_atomic(folder / "model.onnx", onnx_bytes)
    return folder / "model.onnx", checkpoint


ADAPTIVE = Image.Palette.ADAPTIVE  # the exact colours: the default palette would dither


def uniform_images():
    """(name, image) of uniform images in every mode a file can hold, dark to light."""
    for shade in (0, 1, 60, 127, 128, 200, 254, 255):
        yield f"L{shade}.png", Image.new("L", (40, 30), shade)
        yield f"RGB{shade}.jpg", Image.new("RGB", (28, 28), (shade, shade // 2, 255 - shade))
        yield f"RGBA{shade}.png", Image.new("RGBA", (28, 28), (shade, shade, shade, 255))
        yield f"RGBA{shade}-clear.png", Image.new("RGBA", (50, 50), (shade, 0, 0, 0))
        paletted = Image.new("RGB", (30, 30), (shade,) * 3).convert("P", palette=ADAPTIVE)
        yield f"P{shade}.gif", paletted
        yield f"I16-{shade}.png", Image.new("I;16", (28, 28), shade * 257)


def metadata(classes=CLASSES, ood_threshold=-3.0):
    return Metadata(
        dataset="mnist",
        classes=tuple(classes),
        subject="a digit",
        temperature=1.0,
        ood_score="max-logit",
        ood_threshold=ood_threshold,
        checkpoint_sha256="0" * 64,
        model={"name": "cnn", "cnn": {"channels": [4], "convs": [1], "dropout": 0.0}},
        epoch=1,
        val_accuracy=0.5,
    )


def tiny_model(
    height=28,
    width=28,
    batch="batch",
    classes=10,
    props=None,
    input_type=TensorProto.UINT8,
    score=True,
):
    """A linear classifier as an ONNX graph: images -> Cast -> Reshape -> MatMul -> logits,
    Softmax -> probabilities, -ReduceMax -> ood_score."""
    weights = np.random.default_rng(0).normal(scale=1e-3, size=(height * width, classes))
    nodes = [
        helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["pixels", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weights"], [LOGITS]),
        helper.make_node("Softmax", [LOGITS], [PROBABILITIES], axis=1),
        helper.make_node("ReduceMax", [LOGITS, "class_axis"], ["top"], keepdims=0),
        helper.make_node("Neg", ["top"], [OOD_SCORE] if score else ["unused"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", input_type, [batch, height, width])],
        [
            *(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, classes])
                for name in (LOGITS, PROBABILITIES)
            ),
            *([helper.make_tensor_value_info(OOD_SCORE, TensorProto.FLOAT, [batch])] * score),
        ],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "weights"),
            numpy_helper.from_array(np.array([-1, height * width], np.int64), "flat_shape"),
            numpy_helper.from_array(np.array([1], np.int64), "class_axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    helper.set_model_props(model, metadata().to_props() if props is None else props)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def schema_check(path: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "check_jsonschema",
        "--builtin-schema",
        "vendor.github-workflows",
        str(path),
    ]
    return subprocess.run(command, capture_output=True, text=True)


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of each row of a Markdown table, stripped."""
    rows = [line.strip().strip("|") for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.split("|")] for row in rows]
