"""Smoke test of the benchmark: `--quick` produces every number (which mean nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import step_profile
from tests.conftest import REPO

RECIPES = ["default", "examples-cnn", "fast", "mlp", "seed-mlp"]  # conf/recipe/, default first
NUMBERS = [
    "test_accuracy",
    "train_wall_s",
    "epochs_s",
    "train_images_per_s",
    "inference_images_per_s",
    "peak_rss_mb",
]


@pytest.mark.slow
def test_quick_benchmark_produces_every_number(pipeline_baseline, tmp_path):
    repo, _ = pipeline_baseline
    out = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "benchmarks.benchmark",
        "--quick",
        "--data",
        str(repo / "data" / "processed"),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["quick"] is True
    assert {"cpu", "cores", "torch", "threads", "gpu"} <= set(results["machine"])
    assert [run["recipe"] for run in results["runs"]] == RECIPES
    for run in results["runs"]:
        assert run["epochs"] == 1
        assert 0.0 <= run["test_accuracy"] <= 1.0
        assert all(run[key] > 0 for key in NUMBERS), run
    ratios = {row["metric"]: row["ratio"] for row in results["ratios"]}
    assert ratios["training images/s"] > 0 and ratios["peak RSS"] > 0
    by_recipe = {run["recipe"]: run for run in results["runs"]}
    expected = by_recipe["default"]["train_wall_s"] / by_recipe["examples-cnn"]["train_wall_s"]
    assert abs(ratios["training wall time"] - expected) < 0.001
    markdown = out.with_suffix(".md").read_text()
    assert "Quick mode" in markdown and "| examples-cnn |" in markdown
    assert "## default / examples-cnn" in markdown


@pytest.mark.slow  # imports the benchmark's whole stack in a subprocess
def test_unknown_recipe_is_one_clear_error(tmp_path):
    command = [
        sys.executable,
        "-m",
        "benchmarks.benchmark",
        "--recipes",
        "turbo",
        "--out",
        str(tmp_path / "r"),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    known = "known: default, examples-cnn, fast, mlp, seed-mlp"
    assert f"unknown recipe 'turbo'; {known}" in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_the_step_breakdown_sums_its_parts_and_keeps_the_whole():
    results = {
        "fast, 1 thread": {"conv forward": 2.0, "batch norm (fwd+bwd)": 1.5, "whole step": 4.0},
        "portable, 2 threads": {
            "conv forward": 3.0,
            "batch norm (fwd+bwd)": 4.0,
            "whole step": 6.5,
        },
    }
    lines = step_profile.table(results).splitlines()
    assert lines[0] == "| operation | fast, 1 thread (ms) | portable, 2 threads (ms) |"
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines[2:]}
    assert rows["conv forward"] == ["2.00", "3.00 |"]
    assert rows["sum of the parts"] == ["3.5", "7.0 |"]
    assert rows["whole step minus the parts"] == ["0.5", "-0.5 |"]
    assert rows["**whole step**"] == ["**4.0**", "**6.5** |"]
