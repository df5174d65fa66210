"""The stages as users run them: `python -m stages.<name>`, with one-line errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mnistpipe.data import processed
from mnistpipe.data.datasets import TRAIN_LABELS
from mnistpipe.modeling.checkpoints import load_checkpoint
from mnistpipe.params import load_params
from tests.helpers import evaluate_paths, params_file, run_chain, stage


def assert_one_line_error(result, prefix, fragment):
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{prefix}: error: ") and fragment in lines[-1]
    assert "Traceback" not in result.stderr


def test_preprocess_writes_deterministic_outputs(tmp_path, raw_dir):
    params = params_file(tmp_path, raw_dir)
    outputs = []
    for run in ("a", "b"):
        out, counts = tmp_path / run / "processed", tmp_path / run / "counts.csv"
        result = stage(
            "preprocess", "--raw", raw_dir, "--out", out, "--counts", counts, "--params", params
        )
        assert result.returncode == 0, result.stderr
        outputs.append({path.name: path.read_bytes() for path in [*out.iterdir(), counts]})
    assert outputs[0] == outputs[1]
    meta = processed.load_meta(tmp_path / "a" / "processed")
    assert meta.sizes == {"train": 160, "val": 40, "test": 50}
    table = pd.read_csv(tmp_path / "a" / "counts.csv", index_col="class")
    assert table[["train", "val", "test"]].sum().tolist() == [160, 40, 50]
    assert (table["val"] == 4).all()
    val = processed.load_split(tmp_path / "a" / "processed", "val")
    assert np.bincount(val.labels).tolist() == [4] * 10


def test_preprocess_refuses_a_corrupt_file_and_keeps_old_outputs(tmp_path, raw_dir):
    params = params_file(tmp_path, raw_dir)
    out, counts = tmp_path / "processed", tmp_path / "counts.csv"
    assert (
        stage(
            "preprocess", "--raw", raw_dir, "--out", out, "--counts", counts, "--params", params
        ).returncode
        == 0
    )
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    labels = raw_dir / TRAIN_LABELS
    labels.write_bytes(labels.read_bytes()[:-3])
    result = stage(
        "preprocess", "--raw", raw_dir, "--out", out, "--counts", counts, "--params", params
    )
    assert_one_line_error(result, "preprocess", f"{labels}: truncated: shape (200,)")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_preprocess_rejects_a_subset_too_small(tmp_path, raw_dir):
    params = params_file(tmp_path, raw_dir, **{"subset: 0": "subset: 45"})
    result = stage(
        "preprocess",
        "--raw",
        raw_dir,
        "--out",
        tmp_path / "p",
        "--counts",
        tmp_path / "c.csv",
        "--params",
        params,
    )
    assert_one_line_error(result, "preprocess", "preprocess.val_size=40 does not fit 45 images")


def test_download_refuses_files_that_are_not_the_official_bytes(tmp_path, raw_dir):
    params = params_file(tmp_path, raw_dir)
    out = tmp_path / "out"
    result = stage("download", "--out", out, "--params", params)
    assert_one_line_error(result, "download", "no source gave the official mnist files (local: ")
    assert "is not the official 6bbc9ace898e44ae57da46a324031adb" in result.stderr
    assert not out.exists()


def test_download_rejects_a_typo_in_params_before_any_work(tmp_path, raw_dir):
    params = params_file(tmp_path, raw_dir, **{"local_dir:": "locl_dir:"})
    result = stage("download", "--out", tmp_path / "out", "--params", params)
    assert_one_line_error(result, "download", "unknown key download.locl_dir")
    assert "trying source" not in result.stderr


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_train_and_evaluate_are_reproducible_to_the_byte(tmp_path, raw_dir, stage_chain):
    """The same bytes on a rerun with another thread count (portable numerics), DVCLive's
    per-epoch files included: the shared chain ran on 1 thread."""
    first, paths, _ = stage_chain
    two_threads = params_file(tmp_path, raw_dir, **{"threads: 1": "threads: 2"})
    second, _ = run_chain(tmp_path, raw_dir, two_threads, "b")
    assert files_of(first / "live") == files_of(second / "live")
    assert (first / "model.pt").read_bytes() == (second / "model.pt").read_bytes()
    assert (first / "model.onnx").read_bytes() == (second / "model.onnx").read_bytes()
    for path in paths.values():
        assert path.read_bytes() == (second / path.name).read_bytes()
    history = pd.read_csv(first / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert list(history.columns) == [
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
    ]  # no timings: the history is a DVC-tracked output, the same bytes on every rerun
    check_live_metrics(first / "live", history)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["test_images"] == 50
    predictions = pd.read_csv(paths["predictions"])
    wrong = int((predictions["actual"] != predictions["predicted"]).sum())
    assert metrics["misclassified"] == wrong
    assert len(pd.read_csv(paths["misclassified"])) == wrong


def check_live_metrics(live: Path, history: pd.DataFrame) -> None:
    """DVCLive's files hold the history's values at step = epoch, without timestamps."""
    summary = json.loads((live / "metrics.json").read_text())
    last = history.iloc[-1]
    assert summary == {**{name: last[name] for name in history.columns[1:]}, "step": 2}
    for name in history.columns[1:]:
        table = pd.read_csv(live / "plots" / "metrics" / f"{name}.tsv", sep="\t")
        assert list(table.columns) == ["step", name]  # no timestamp column
        assert table["step"].tolist() == history["epoch"].tolist()
        assert table[name].tolist() == history[name].tolist()


@pytest.mark.slow
def test_train_trains_the_named_model_and_records_its_recipe(tmp_path, raw_dir):
    changes = {
        "name: cnn": "name: mlp",
        "epochs: 2": "epochs: 1",
        "optimizer: sgd": "optimizer: adadelta",
        "lr: 0.05": "lr: 1.0",
        "schedule: one-cycle": "schedule: step",
    }
    params = params_file(tmp_path, raw_dir, **changes)
    out, _ = run_chain(tmp_path, raw_dir, params, "a")
    checkpoint = load_checkpoint(out / "model.pt")
    assert checkpoint.model_name == "mlp" and checkpoint.model_config.hidden == (16,)
    recipe = load_params(params).train.to_mapping()
    assert checkpoint.recipe.to_mapping() == recipe  # as given: the runtime is not in it
    assert (checkpoint.numerics, checkpoint.device) == ("portable", "cpu")
    assert (checkpoint.recipe.optimizer, checkpoint.recipe.epochs) == ("adadelta", 1)
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1]
    assert history["lr"].tolist() == [0.7]  # Adadelta 1.0, stepped by 0.7 after the epoch


@pytest.mark.slow
def test_evaluate_refuses_a_missing_or_mismatched_checkpoint(tmp_path, stage_chain):
    chain, _, params = stage_chain
    out = tmp_path / "a"
    shutil.copytree(chain / "processed", out / "processed")  # its meta.json is changed below
    flags = [item for name, path in evaluate_paths(out).items() for item in (f"--{name}", path)]
    result = stage(
        "evaluate",
        "--data",
        out / "processed",
        "--model",
        out / "absent.pt",
        *flags,
        "--params",
        params,
    )
    assert_one_line_error(result, "evaluate", "absent.pt: checkpoint not found")
    meta_path = out / "processed" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "dataset": "fashion-mnist"}))
    result = stage(
        "evaluate",
        "--data",
        out / "processed",
        "--model",
        chain / "model.pt",
        *flags,
        "--params",
        params,
    )
    assert_one_line_error(result, "evaluate", "holds fashion-mnist but")
    assert not any(path.exists() for path in evaluate_paths(out).values())
    assert "was trained on mnist" in result.stderr


def test_train_rejects_bad_params_before_training(tmp_path, raw_dir):
    params = params_file(tmp_path, raw_dir, **{"epochs: 2": "epochs: 0"})
    result = stage(
        "train",
        "--data",
        tmp_path / "nowhere",
        "--model",
        tmp_path / "m.pt",
        "--history",
        tmp_path / "h.csv",
        "--params",
        params,
    )
    assert_one_line_error(
        result, "train", "train.epochs: input should be greater than or equal to 1, got 0"
    )


@pytest.mark.slow  # starts a training process
def test_portable_train_without_the_launcher_is_one_clear_error(tmp_path, raw_dir):
    params = params_file(tmp_path, raw_dir)
    files = ("--data", tmp_path, "--model", tmp_path / "m.pt", "--history", tmp_path / "h.csv")
    result = stage("train", *files, "--params", params, launched=False)
    assert_one_line_error(result, "train", "numerics 'portable' did not take effect")
    assert "python -m mnistpipe.modeling.numerics portable stages.<name>" in result.stderr
