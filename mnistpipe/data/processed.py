"""The processed-data format that `preprocess` writes and `train` and `evaluate` read.

A folder with, for each split in SPLITS, `<split>_images.npy` (N, 28, 28) uint8 and
`<split>_labels.npy` (N,) uint8, plus `meta.json`: the dataset, its class names and the pixel
mean and std of the training split (on the 0-1 scale) for normalization at load time.
Plain .npy files load in milliseconds and, unlike .npz, are byte-identical run to run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from mnistpipe.config import Config, rule
from mnistpipe.data.idx import IMAGE_SHAPE
from mnistpipe.errors import PipelineError
from mnistpipe.files import atomic_path, write_text_atomic

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"


class PreprocessParams(Config):
    val_size: int = Field(
        ge=1, description="training images held out for validation, stratified by class"
    )
    subset: Annotated[
        int, rule(lambda v: v >= 0, "must be 0 (all images) or a positive count")
    ] = Field(
        description="keep this many training images (stratified) before the split; 0 = all."
        " For smoke runs"
    )


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) uint8


@dataclass(frozen=True)
class Meta:
    dataset: str
    classes: tuple[str, ...]
    mean: float  # of the training split's pixels, scaled to 0-1
    std: float
    sizes: dict[str, int]  # split -> number of images


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of uint8 pixels on the 0-1 scale, in float64."""
    scaled = images.astype(np.float64) / 255.0
    return float(scaled.mean()), float(scaled.std())


def save(
    folder: str | Path, splits: dict[str, Split], dataset: str, classes: tuple[str, ...]
) -> Meta:
    """Write every split and the metadata; the training split's pixel stats go into meta.json."""
    folder = Path(folder)
    if set(splits) != set(SPLITS):
        raise ValueError(f"expected splits {SPLITS}, got {tuple(splits)}")
    for name in SPLITS:
        _save_array(folder / f"{name}_images.npy", splits[name].images)
        _save_array(folder / f"{name}_labels.npy", splits[name].labels)
    mean, std = pixel_stats(splits["train"].images)
    sizes = {name: len(splits[name].labels) for name in SPLITS}
    meta = Meta(dataset=dataset, classes=tuple(classes), mean=mean, std=std, sizes=sizes)
    write_text_atomic(folder / META_FILE, json.dumps(asdict(meta), indent=2) + "\n")
    return meta


def load_meta(folder: str | Path) -> Meta:
    path = Path(folder) / META_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        meta = Meta(**{**raw, "classes": tuple(raw["classes"])})
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found; run the preprocess stage") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise PipelineError(f"{path}: not valid processed-data metadata ({exc})") from None
    return meta


def load_split(folder: str | Path, name: str) -> Split:
    """One split, checked against the shapes and sizes that meta.json records."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    folder = Path(folder)
    meta = load_meta(folder)
    images = _load_array(folder / f"{name}_images.npy", (meta.sizes[name], *IMAGE_SHAPE))
    labels = _load_array(folder / f"{name}_labels.npy", (meta.sizes[name],))
    return Split(images=images, labels=labels)


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        np.save(stream, np.ascontiguousarray(array, dtype=np.uint8), allow_pickle=False)


def _load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found; run the preprocess stage") from None
    except ValueError as exc:
        raise PipelineError(f"{path}: not a valid .npy file ({exc})") from None
    if array.dtype != np.uint8 or array.shape != shape:
        raise PipelineError(
            f"{path}: expected uint8 {shape} as meta.json says, found {array.dtype} {array.shape}"
        )
    return array
