"""The export stage and the ONNX model file it writes (mnistpipe/deploy/onnx_model.py's contract).

Each export takes seconds, so the exports are made once per module and shared.
"""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from mnistpipe.data import processed
from mnistpipe.deploy.onnx_model import LOGITS, OOD_SCORE, PROBABILITIES, classify, load_onnx
from mnistpipe.errors import PipelineError
from mnistpipe.files import sha256_file
from mnistpipe.modeling.checkpoints import Checkpoint, save_checkpoint
from mnistpipe.modeling.models import build_model, predict_logits
from mnistpipe.modeling.ood import score
from stages.export import main
from tests.conftest import RECIPE, REPO, SMALL_CNN, toy_data
from tests.helpers import CLASSES, metadata, params_text, tiny_model

TEMPERATURE = 1.7
OOD_THRESHOLD = -0.1  # between the scores of the random model on `images` (-0.14 to -0.08)
EPOCH = 3
VAL_ACCURACY = 0.4375


def write_params(path, tolerance="1.0e-4"):
    path.write_text(params_text("null", **{"tolerance: 1.0e-4": f"tolerance: {tolerance}"}))
    return path


def save_processed(folder, dataset="mnist", classes=CLASSES):
    splits = {}
    for seed, (name, count) in enumerate((("train", 60), ("val", 40), ("test", 20))):
        data = toy_data(count, seed)
        splits[name] = processed.Split(data.images.numpy(), data.labels.numpy().astype(np.uint8))
    processed.save(folder, splits, dataset, classes)
    return folder


def export(model, data, out, params):
    main(["--model", str(model), "--data", str(data), "--out", str(out), "--params", str(params)])


def assert_error(excinfo, path, *fragments):
    """A one-line message that starts with `path` and says each of `fragments`."""
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{path}"), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def images(count, seed):
    """uint8 (count, 28, 28): random pixels and the toy digits, interleaved."""
    noise = np.random.default_rng(seed).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    digits = toy_data(count, seed).images.numpy()
    return np.where(np.arange(count)[:, None, None] % 2 == 0, noise, digits).astype(np.uint8)


def reference_softmax(logits, temperature):
    scaled = logits.astype(np.float64) / temperature
    exp = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def checkpoint(workspace):
    torch.manual_seed(0)
    model = build_model("cnn", SMALL_CNN, mean=0.13, std=0.31)
    # Nonzero batch-norm statistics, so that fusing them into the convs is exercised.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.1, 0.1)
    checkpoint = Checkpoint(
        "cnn",
        SMALL_CNN,
        RECIPE,
        model.state_dict(),
        "mnist",
        CLASSES,
        EPOCH,
        VAL_ACCURACY,
        temperature=TEMPERATURE,
        ood_threshold=OOD_THRESHOLD,
    )
    path = workspace / "models" / "model.pt"
    path.parent.mkdir()
    save_checkpoint(path, checkpoint)
    return path, checkpoint


@pytest.fixture(scope="module")
def data_dir(workspace):
    return save_processed(workspace / "processed")


@pytest.fixture(scope="module")
def params(workspace):
    return write_params(workspace / "params.yaml")


@pytest.fixture(scope="module")
def exported(workspace, checkpoint, data_dir, params):
    out = workspace / "models" / "model.onnx"
    export(checkpoint[0], data_dir, out, params)
    return out


@pytest.fixture(scope="module")
def deployed(exported):
    return load_onnx(exported)


# The export stage


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_export_writes_a_model_with_the_checkpoints_metadata(exported, deployed, checkpoint):
    path, ckpt = checkpoint
    assert exported.is_file()
    assert deployed.path == exported
    meta = deployed.metadata
    assert meta.classes == deployed.classes == CLASSES == ckpt.classes
    assert meta.dataset == "mnist" == ckpt.dataset
    assert meta.temperature == TEMPERATURE == ckpt.temperature
    assert meta.ood_threshold == OOD_THRESHOLD == ckpt.ood_threshold
    assert (meta.ood_score, meta.subject) == ("max-logit", "a digit")
    assert meta.epoch == EPOCH and meta.val_accuracy == VAL_ACCURACY
    assert meta.model == {
        "name": "cnn",
        "cnn": {"channels": [4, 8], "convs": [1, 1], "dropout": 0.0},
    }
    assert meta.checkpoint_sha256 == sha256_file(path)
    assert len(meta.checkpoint_sha256) == 64
    # The file holds exactly this metadata, and ONNX's own checker accepts it.
    model = onnx.load(exported)
    onnx.checker.check_model(model, full_check=True)
    props = {entry.key: entry.value for entry in model.metadata_props}
    assert props["format"] == "2"
    assert json.loads(props["classes"]) == list(CLASSES)
    assert float(props["temperature"]) == TEMPERATURE
    assert {opset.domain: opset.version for opset in model.opset_import}[""] == 20
    # No temp files were left beside it.
    assert sorted(p.name for p in exported.parent.iterdir()) == ["model.onnx", "model.pt"]


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_onnx_runtime_agrees_with_pytorch(deployed, checkpoint):
    batch = images(250, seed=5)  # more than one of OnnxClassifier.run's 100-image batches
    ours, scores = deployed.run(batch, (LOGITS, OOD_SCORE))
    theirs = predict_logits(checkpoint[1].build(), torch.from_numpy(batch), 64).numpy()
    assert ours.dtype == np.float32 and ours.shape == (250, 10)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    # The graph's score is ood.score of PyTorch's logits: minus the largest, found here apart.
    assert scores.dtype == np.float32 and scores.shape == (250,)
    independent = [-max(row) for row in theirs.tolist()]
    np.testing.assert_allclose(scores, independent, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(score(theirs), independent)
    np.testing.assert_array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))
    # The logits are not all alike: the comparison can tell classes apart.
    assert len(set(theirs.argmax(axis=1).tolist())) > 1


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_probabilities_are_the_logits_calibrated_by_the_temperature(deployed):
    batch = images(60, seed=6)
    (logits,) = deployed.run(batch, (LOGITS,))
    answers = classify(deployed, batch)
    probabilities = answers.probabilities
    assert probabilities.dtype == np.float32 and probabilities.shape == (60, 10)
    np.testing.assert_allclose(probabilities, reference_softmax(logits, TEMPERATURE), atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Calibrated, not plain: softmax at temperature 1 would differ.
    assert np.abs(probabilities - reference_softmax(logits, 1.0)).max() > 1e-4


@pytest.mark.slow  # a real export (torch.onnx, seconds)
@pytest.mark.parametrize("count", [1, 7])
def test_the_batch_axis_is_dynamic(deployed, checkpoint, count):
    (image_arg,) = deployed.session.get_inputs()
    assert isinstance(image_arg.shape[0], str) and image_arg.shape[1:] == [28, 28]
    batch = images(count, seed=10 + count)
    logits, probabilities = deployed.session.run([LOGITS, PROBABILITIES], {"images": batch})
    assert logits.shape == probabilities.shape == (count, 10)
    theirs = predict_logits(checkpoint[1].build(), torch.from_numpy(batch), 100).numpy()
    np.testing.assert_allclose(logits, theirs, rtol=0, atol=1e-4)
    answers = classify(deployed, batch)
    assert answers.probabilities.shape == (count, 10) and answers.scores.shape == (count,)


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_no_batch_gives_no_rows(deployed):
    answers = classify(deployed, np.zeros((0, 28, 28), np.uint8))
    assert answers.probabilities.shape == (0, 10) and answers.scores.shape == (0,)
    assert list(answers) == []


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_answers_are_flagged_above_the_threshold(deployed):
    answers = classify(deployed, images(40, seed=8))
    scores = answers.scores
    assert answers.threshold == OOD_THRESHOLD
    flags = [answer.flagged for answer in answers]
    assert flags == (scores > OOD_THRESHOLD).tolist()
    # The test means something: this batch has images on both sides of the threshold.
    assert any(flags) and not all(flags), scores


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_the_file_holds_no_absolute_path(exported, workspace):
    content = exported.read_bytes()
    assert str(REPO).encode() not in content
    assert str(workspace).encode() not in content
    assert b"/tmp/" not in content and b"site-packages" not in content


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_exporting_again_elsewhere_gives_the_same_bytes(exported, checkpoint, workspace):
    other = workspace / "elsewhere"
    other.mkdir()
    model = other / "copy.pt"
    shutil.copyfile(checkpoint[0], model)
    data = save_processed(other / "processed")
    out = other / "out" / "again.onnx"
    export(model, data, out, write_params(other / "params.yaml"))
    assert out.read_bytes() == exported.read_bytes()


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_a_failed_check_writes_nothing(checkpoint, data_dir, workspace):
    folder = workspace / "failing"
    folder.mkdir()
    out = folder / "model.onnx"
    out.write_bytes(b"the previous model")
    params = write_params(folder / "params.yaml", tolerance="1.0e-12")
    with pytest.raises(PipelineError) as excinfo:
        export(checkpoint[0], data_dir, out, params)
    assert_error(
        excinfo,
        out,
        "ONNX Runtime disagrees with PyTorch",
        "export.tolerance 1e-12",
        "nothing written",
    )
    assert out.read_bytes() == b"the previous model"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "params.yaml"]


def test_a_model_of_another_dataset_is_refused_before_exporting(checkpoint, workspace):
    folder = workspace / "fashion"
    folder.mkdir()
    data = save_processed(folder / "processed", dataset="fashion-mnist")
    out = folder / "model.onnx"
    with pytest.raises(PipelineError) as excinfo:
        export(checkpoint[0], data, out, write_params(folder / "params.yaml"))
    assert_error(excinfo, data, "holds fashion-mnist", f"{checkpoint[0]} was trained on mnist")
    assert not out.exists()


@pytest.mark.parametrize(
    ("tolerance", "message"),
    [("0", "export.tolerance"), ("0.5", "export.tolerance"), ("{}", "export.tolerance")],
    ids=["zero", "over-0.01", "a-mapping"],
)
def test_bad_params_are_refused_before_exporting(
    checkpoint, data_dir, workspace, tolerance, message
):
    folder = workspace / f"params-{tolerance}"
    folder.mkdir()
    params = write_params(folder / "params.yaml", tolerance=tolerance)
    out = folder / "model.onnx"
    with pytest.raises(PipelineError) as excinfo:
        export(checkpoint[0], data_dir, out, params)
    assert_error(excinfo, params, message)
    assert not out.exists()


# Bad model files


def test_the_tiny_graph_of_the_contract_loads_and_classifies(tmp_path):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_model())
    model = load_onnx(path)
    assert model.classes == CLASSES and model.metadata == metadata()
    answers = classify(model, images(13, seed=1))
    assert answers.probabilities.shape == (13, 10) and answers.scores.shape == (13,)
    np.testing.assert_allclose(answers.probabilities.sum(axis=1), 1.0, atol=1e-5)
    (logits,) = model.run(images(13, seed=1), (LOGITS,))
    np.testing.assert_allclose(answers.scores, score(logits), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "fragments"),
    [
        (
            {"height": 32, "width": 32},
            ["input must be images (batch, 28, 28) uint8", "['batch', 32, 32]"],
        ),
        ({"batch": 1}, ["input must be images (batch, 28, 28) uint8", "[1, 28, 28]"]),
        (
            {"input_type": TensorProto.FLOAT},
            ["input must be images (batch, 28, 28) uint8", "tensor(float)"],
        ),
        ({"classes": 9}, ["output logits must be (batch, 10) float32", "10 classes"]),
        (
            {"props": metadata(classes=[*CLASSES, "ten", "eleven"]).to_props()},
            ["output logits must be (batch, 12) float32", "12 classes", "['batch', 10]"],
        ),
        ({"score": False}, ["output ood_score must be (batch,) float32, found none"]),
    ],
    ids=[
        "32x32",
        "fixed-batch",
        "float-input",
        "9-outputs",
        "12-classes-in-metadata",
        "no-ood-score",
    ],
)
def test_a_graph_of_another_signature_is_refused(tmp_path, shape, fragments):
    path = tmp_path / "other.onnx"
    path.write_bytes(tiny_model(**shape))
    with pytest.raises(PipelineError) as excinfo:
        load_onnx(path)
    assert_error(excinfo, path, *fragments)


def stripped(content, drop=(), change=None):
    """`content` with metadata keys in `drop` left out and those in `change` replaced; all of
    them when `drop` is None."""
    model = onnx.load_from_string(content)
    props = {entry.key: entry.value for entry in model.metadata_props}
    props = {} if drop is None else {k: v for k, v in props.items() if k not in drop}
    helper.set_model_props(model, {**props, **(change or {})})
    return model.SerializeToString()


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_bad_model_files_are_one_line_errors_naming_them(tmp_path, exported):
    good = exported.read_bytes()
    cases = {
        "absent.onnx": (None, ["model not found"]),
        "folder.onnx": ("folder", ["is a folder, not an ONNX model"]),
        "empty.onnx": (b"", ["not a readable ONNX model"]),
        "noise.onnx": (
            np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            ["not a readable ONNX model"],
        ),
        "half.onnx": (good[: len(good) // 2], ["not a readable ONNX model"]),
        "text.onnx": (b"ir_version: 8\n", ["not a readable ONNX model"]),
        "plain.onnx": (
            stripped(good, drop=None),
            ["not a model exported by this pipeline", "metadata format None"],
        ),
        "format1.onnx": (
            stripped(good, change={"format": "1"}),
            ["not a model exported by this pipeline", "'1'"],
        ),
        "no-threshold.onnx": (
            stripped(good, drop=["ood_threshold"]),
            ["metadata key 'ood_threshold' missing"],
        ),
        "no-dataset.onnx": (stripped(good, drop=["dataset"]), ["metadata key 'dataset' missing"]),
        "no-classes.onnx": (stripped(good, drop=["classes"]), ["metadata key 'classes' missing"]),
        "bad-epoch.onnx": (stripped(good, change={"epoch": "three"}), ["unreadable metadata"]),
        "bad-classes.onnx": (stripped(good, change={"classes": "[0, "}), ["unreadable metadata"]),
    }
    for name, (content, fragments) in cases.items():
        path = tmp_path / name
        if content == "folder":
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)
        with pytest.raises(PipelineError) as excinfo:
            load_onnx(path)
        assert_error(excinfo, path, *fragments)
        assert str(path) in str(excinfo.value)


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_bytes_given_directly_are_named_as_told(exported):
    good = exported.read_bytes()
    with pytest.raises(PipelineError) as excinfo:
        load_onnx("models/candidate.onnx", data=good[: len(good) // 2])
    assert_error(excinfo, "models/candidate.onnx", "not a readable ONNX model")
    assert load_onnx("models/candidate.onnx", data=good).metadata.temperature == TEMPERATURE
