"""The stages as users run them: `python -m stages.<name>`, with one-line errors."""

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd

from mnistpipe import processed
from mnistpipe.datasets import TRAIN_LABELS
from tests.conftest import REPO

PARAMS = """
seed: 3
data:
  dataset: mnist
download:
  sources: [local]
  local_dir: {local_dir}
preprocess:
  val_size: 40
  subset: 0
"""


def stage(name, *args):
    command = [sys.executable, "-m", f"stages.{name}", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


def params_file(tmp_path, raw_dir, **replace):
    text = textwrap.dedent(PARAMS.format(local_dir=raw_dir))
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


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
