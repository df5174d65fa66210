"""Shared test helpers: small synthetic idx datasets and a throwaway copy of the repository."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

from mnistpipe.data import idx
from mnistpipe.data.datasets import (
    IDX_FILES,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DatasetSpec,
)
from mnistpipe.files import md5_hex
from mnistpipe.modeling.models import CNNConfig
from mnistpipe.modeling.recipe import TrainParams
from mnistpipe.modeling.synthetic import ood_pages
from mnistpipe.modeling.training import Data
from tools.compose_params import compose

REPO = Path(__file__).resolve().parents[1]

# A small training recipe and CNN for unit tests: fast on one CPU thread.
RECIPE = TrainParams(
    epochs=2,
    batch_size=32,
    optimizer="sgd",
    lr=0.05,
    momentum=0.9,
    weight_decay=5e-4,
    schedule="one-cycle",
    step_gamma=0.7,
    label_smoothing=0.1,
    augment_rotate=10.0,
    augment_shift=2.0,
    augment_scale=0.1,
    augment_blur=0.0,
    outliers_per_batch=0,
    outlier_images=100,
    outlier_weight=0.5,
    ood_rejection=0.01,
)
SMALL_CNN = CNNConfig(channels=(4, 8), convs=(1, 1))


def toy_data(count: int, seed: int) -> Data:
    """Digits stand-in: class k is a bright 6x6 block at its own place on a dark image. The
    same bytes on every machine: torch's CPU generator is software."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    images = torch.randint(0, 40, (count, 28, 28), generator=generator, dtype=torch.uint8)
    for index, label in enumerate(labels.tolist()):
        row, col = 4 + 12 * (label // 5), 1 + 5 * (label % 5)
        images[index, row : row + 6, col : col + 6] = 255
    return Data(images=images, labels=labels)


def synthetic_files(n_train: int = 200, n_test: int = 50, seed: int = 0) -> dict[str, bytes]:
    """The four idx files of a random dataset whose labels cycle through the ten classes."""
    rng = np.random.default_rng(seed)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: (np.arange(n_train) % 10).astype(np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        TEST_LABELS: (np.arange(n_test) % 10).astype(np.uint8),
    }
    return {name: idx.encode(array) for name, array in arrays.items()}


def synthetic_spec(files: dict[str, bytes]) -> DatasetSpec:
    return DatasetSpec(
        name="synthetic",
        torchvision_class="MNIST",
        md5={name: md5_hex(files[name]) for name in IDX_FILES},
        classes=tuple(str(digit) for digit in range(10)),
        description="random noise in MNIST's format, for tests",
        subject="a digit",
    )


def synthetic_raw(parent: Path) -> Path:
    """parent/raw, holding the four idx files of `synthetic_files()`."""
    folder = parent / "raw"
    folder.mkdir()
    for name, data in synthetic_files().items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """A folder holding a synthetic dataset's four idx files."""
    return synthetic_raw(tmp_path)


TRACER = Path(__file__).with_name("tracer")  # its sitecustomize.py records what a process loads


def dvc_env(trace: Path | None = None) -> dict[str, str]:
    """The environment for running dvc and git in a throwaway clone: Python writes bytecode, as
    on users' machines, and with `trace` every Python process records there what it loads."""
    venv_bin = str(Path(os.sys.executable).parent)
    inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    traced = {"PYTHONPATH": str(TRACER), "MNISTPIPE_TRACE": str(trace)} if trace else {}
    return {
        **inherited,
        **traced,
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "pipeline tests",
        "GIT_AUTHOR_EMAIL": "tests@example.invalid",
        "GIT_COMMITTER_NAME": "pipeline tests",
        "GIT_COMMITTER_EMAIL": "tests@example.invalid",
    }


def run(
    command: list[str], cwd: Path, check: bool = True, trace: Path | None = None
) -> subprocess.CompletedProcess:
    env = dvc_env(trace)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def copy_repo(clone: Path) -> Path:
    """A fresh git repository holding the working tree's files (tracked or not, not ignored)."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    run(["git", "init", "-q"], clone)
    run(["git", "add", "-A"], clone)
    run(["git", "commit", "-qm", "copy of the working tree"], clone)
    return clone


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    return copy_repo(tmp_path / "clone")


# A small but real run: 5,000 training images, 1 epoch. Replaced in conf/config.yaml's text
# (params.yaml is composed from it, by `dvc exp run` too), so that the rest stays as written.
TINY_PARAMS = {
    "  subset: 0\n": "  subset: 5000\n",
    "  val_size: 5000\n": "  val_size: 500\n",
    "  epochs: 6\n": "  epochs: 1\n",
    "  batch_size: 128\n": "  batch_size: 64\n",
    "  outlier_images: 6000": "  outlier_images: 500",  # 1,264 draws: each seen 2-3 times
    "  photos: 200\n": "  photos: 1\n",  # 10 photos, JPEG and PNG: the check, not the figure
    "  numbers: 200\n": "  numbers: 1\n",
    "  non_digit_share: 1.0\n": "  non_digit_share: 0.1\n",  # 247 of 2,464 pages
}


def edit_config(repo: Path, replacements: dict[str, str]) -> None:
    """Replace text in the repository's conf/config.yaml, then compose params.yaml from it."""
    config = repo / "conf" / "config.yaml"
    text = config.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    run([os.sys.executable, "-m", "tools.compose_params"], repo)


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder of the test session that `build` fills once, shared by pytest-xdist's workers
    (each runs the session fixtures itself): the first to get the lock builds it."""
    root = factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # the run's own
    folder = root / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def build_stage_chain(folder: Path) -> None:
    from tests.helpers import params_file, run_chain  # helpers imports this module

    raw = synthetic_raw(folder)
    run_chain(folder, raw, params_file(folder, raw), "a")


@pytest.fixture(scope="session")
def stage_chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], Path]:
    """(folder, evaluate's output paths, params file) of preprocess, train, export and evaluate
    run as users run them, once per test run, on the synthetic dataset with tests/helpers'
    PARAMS: for the tests that only read what the stages wrote (copy before changing it)."""
    from tests.helpers import evaluate_paths

    folder = built_once(tmp_path_factory, "stage_chain", build_stage_chain)
    return folder / "a", evaluate_paths(folder / "a"), folder / "params.yaml"


def build_baseline(folder: Path) -> None:
    repo = copy_repo(folder / "repo")
    edit_config(repo, TINY_PARAMS)
    (folder / "trace").mkdir()
    first = run(["dvc", "repro"], repo, trace=folder / "trace")
    (folder / "first.json").write_text(json.dumps([first.stdout, first.stderr]))
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny run"], repo)


@pytest.fixture(scope="session")
def pipeline_baseline(tmp_path_factory: pytest.TempPathFactory):
    """A copy of the repository where `dvc repro` of tiny params ran and was committed, with
    bytecode written and what each process loaded recorded in the folder beside it, `trace`.
    Built once per test run, whatever the number of workers.

    Returns the repository and the output of that first run (download included).
    """
    folder = built_once(tmp_path_factory, "baseline", build_baseline)
    stdout, stderr = json.loads((folder / "first.json").read_text())
    return folder / "repo", subprocess.CompletedProcess(["dvc", "repro"], 0, stdout, stderr)


@pytest.fixture
def pipeline_repo(pipeline_baseline, tmp_path: Path) -> Path:
    """A private copy of the baseline (git history, DVC cache and workspace)."""
    repo = tmp_path / "repo"
    shutil.copytree(pipeline_baseline[0], repo, symlinks=True)
    return repo


@pytest.fixture(scope="session")
def served(pipeline_baseline, tmp_path_factory):
    """(ONNX model path, processed-data folder): the fast recipe's CNN trained for 4 epochs
    with augmentation and outlier exposure on the baseline's real MNIST subset (about 97%
    test accuracy), exported by the export stage; its checkpoint lies beside it."""
    data = pipeline_baseline[0] / "data" / "processed"
    folder = built_once(tmp_path_factory, "served", lambda folder: build_served(folder, data))
    return folder / "model.onnx", data


def build_served(folder: Path, data: Path) -> None:
    overrides = [
        "recipe=fast",
        "train.epochs=4",
        "train.augment_rotate=10.0",
        "train.augment_shift=2.0",
        "train.augment_scale=0.1",
        # Stronger outlier exposure than the default's, for a model that sees 5,000 digits
        "train.outliers_per_batch=32",
        "train.outlier_weight=0.5",
    ]
    (folder / "params.yaml").write_text(compose(REPO, overrides))
    model = folder / "model.pt"
    run(
        [
            sys.executable,
            "-m",
            "stages.train",
            "--data",
            str(data),
            "--model",
            str(model),
            "--history",
            str(folder / "history.csv"),
            "--params",
            str(folder / "params.yaml"),
        ],
        REPO,
    )
    onnx = folder / "model.onnx"
    export = ["--model", str(model), "--data", str(data), "--out", str(onnx)]
    run(
        [sys.executable, "-m", "stages.export", *export, "--params", str(folder / "params.yaml")],
        REPO,
    )
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.97}))


def non_digit_uploads() -> dict[str, list[bytes]]:
    """PNG files of three kinds of non-digit that evaluate measures, drawn from another seed
    than evaluate's: 40 blanks, 40 noise pages, 40 pages of dots."""

    def png(page: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.clip(np.rint(page), 0, 255).astype(np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    return {
        kind: [png(page) for page, _ in ood_pages(kind, seed=7)[:40]]
        for kind in ("blank", "noise", "dots")
    }
