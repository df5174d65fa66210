"""Stage `preprocess`: validate the idx files and write a stratified train/val/test split.

Images stay uint8; the training split's pixel mean and std go into the processed data's
metadata for normalization at load time. Reads params `seed`, `data.dataset` and `preprocess`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from mnistpipe.cli import run_stage
from mnistpipe.config import PARAMS_FILE, Sections, Seed, load_sections
from mnistpipe.data import idx, processed
from mnistpipe.data.datasets import (
    DATASETS,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DataParams,
)
from mnistpipe.data.processed import PreprocessParams, Split
from mnistpipe.errors import PipelineError
from mnistpipe.files import write_text_atomic

log = logging.getLogger("preprocess")


class PreprocessSections(Sections):
    seed: Seed
    data: DataParams
    preprocess: PreprocessParams


def stratified_choice(
    labels: np.ndarray, size: int, seed: int, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices of `size` images drawn with every class in proportion, and of the rest.

    `key` names the param that set `size`, for the error when it cannot fit.
    """
    classes = len(np.unique(labels))
    if not classes <= size <= len(labels) - classes:
        raise PipelineError(
            f"{key}={size} does not fit {len(labels)} images of {classes} classes:"
            f" it must be between {classes} and {len(labels) - classes}"
        )
    rest, chosen = train_test_split(
        np.arange(len(labels)), test_size=size, stratify=labels, random_state=seed
    )
    return np.sort(chosen), np.sort(rest)


def split_dataset(
    train: Split, test: Split, params: PreprocessParams, seed: int
) -> dict[str, Split]:
    """The optional subset of the training images, then the stratified validation split."""
    if params.subset:
        kept, _ = stratified_choice(train.labels, params.subset, seed, "preprocess.subset")
        train = Split(train.images[kept], train.labels[kept])
    val_idx, train_idx = stratified_choice(
        train.labels, params.val_size, seed, "preprocess.val_size"
    )
    return {
        "train": Split(train.images[train_idx], train.labels[train_idx]),
        "val": Split(train.images[val_idx], train.labels[val_idx]),
        "test": test,
    }


def class_counts(splits: dict[str, Split], classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per class: its name and its number of images in each split."""
    counts = {
        name: np.bincount(split.labels, minlength=len(classes)) for name, split in splits.items()
    }
    table = pd.DataFrame({"class": range(len(classes)), "name": classes, **counts})
    return table.set_index("class")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.preprocess", description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="folder of the four idx files")
    parser.add_argument("--out", type=Path, required=True, help="processed-data folder")
    parser.add_argument("--counts", type=Path, required=True, help="class counts CSV")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    params = load_sections(PreprocessSections, args.params)
    spec = DATASETS[params.data.dataset]

    train = Split(*idx.read_pair(args.raw / TRAIN_IMAGES, args.raw / TRAIN_LABELS))
    test = Split(*idx.read_pair(args.raw / TEST_IMAGES, args.raw / TEST_LABELS))
    splits = split_dataset(train, test, params.preprocess, params.seed)
    meta = processed.save(args.out, splits, spec.name, spec.classes)
    write_text_atomic(args.counts, class_counts(splits, spec.classes).to_csv(lineterminator="\n"))
    log.info("wrote %s: %s; pixel mean %.4f, std %.4f", args.out, meta.sizes, meta.mean, meta.std)


if __name__ == "__main__":
    run_stage(main, "preprocess")
