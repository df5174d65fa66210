"""Pages beyond the test set, through the predict command's preprocessing and a model.

The evaluate stage scores foreign digits and synthetic non-digits with these functions into
its OOD table and metrics; the benchmarks use the same ones, so each check exists once.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pandas as pd
import torch

from mnistpipe.data.idx import IMAGE_SHAPE
from mnistpipe.deploy.imaging import (
    ImageError,
    foreign_digit_pages,
    load_grey,
    prepare_bytes,
    to_mnist,
)
from mnistpipe.deploy.numbers import Digit, digits_of_row, number_text
from mnistpipe.modeling import ood
from mnistpipe.modeling.calibration import softmax
from mnistpipe.modeling.models import predict_logits
from mnistpipe.modeling.photos import RIGHT, Photo, Row
from mnistpipe.modeling.synthetic import Page

FOREIGN = "foreign digits"  # the OOD table's kind for foreign_pages


def foreign_pages() -> list[Page]:
    """imaging.foreign_digit_pages, each named by its digit."""
    pages, labels = foreign_digit_pages()
    return list(zip(pages, map(str, labels), strict=True))


def evenly_spread(pages: list[Page], share: float) -> list[Page]:
    """The share `share` (0-1] of `pages` spread evenly over them, in order, never none: all of
    them at 1 (a blank kind's shades dark to light stay dark to light at any share)."""
    count = max(1, math.ceil(share * len(pages)))
    return [pages[i] for i in np.unique(np.linspace(0, len(pages) - 1, count).round().astype(int))]


def prepare_pages(pages: list[Page]) -> tuple[np.ndarray, np.ndarray]:
    """The (M, 28, 28) uint8 images of the pages that the preprocessing accepts, and the (N,)
    bool mask of those it refused (blank, faint or speck ink: imaging.NoInkError)."""
    return _prepared([partial(to_mnist, page) for page, _ in pages])


def prepare_photos(photos: list[Photo], workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`prepare_pages` for photo files, decoded as the predict command decodes them, on
    `workers` threads (Pillow, NumPy and SciPy let go of the GIL for the heavy parts)."""
    conversions = [partial(prepare_bytes, photo.data, photo.name) for photo in photos]
    return _prepared(conversions, workers)


def _accepted(convert: Callable[[], np.ndarray]) -> np.ndarray | None:
    try:
        return convert()
    except ImageError:
        return None


def _prepared(
    conversions: list[Callable[[], np.ndarray]], workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    with ThreadPoolExecutor(max(1, workers)) as executor:
        prepared = list(executor.map(_accepted, conversions))
    images = [image for image in prepared if image is not None]
    refused = [image is None for image in prepared]
    stacked = np.stack(images) if images else np.empty((0, *IMAGE_SHAPE), np.uint8)
    return stacked, np.array(refused, dtype=bool)


def scored_pages(
    kind: str, pages: list[Page], model: torch.nn.Module, temperature: float, batch_size: int
) -> pd.DataFrame:
    """One row per page, prepared as the predict command does: what it is, whether the
    preprocessing refused it, and for those it did not the model's class, its calibrated
    probability and the OOD score (empty for refused pages)."""
    table = pd.DataFrame({"kind": kind, "item": [name for _, name in pages]})
    return _scored(table, *prepare_pages(pages), model, temperature, batch_size)


def scored_photos(
    photos: list[Photo],
    model: torch.nn.Module,
    temperature: float,
    batch_size: int,
    workers: int = 1,
) -> pd.DataFrame:
    """`scored_pages` for photos: one row per photo with its condition, file name and label;
    prepared on `workers` threads."""
    table = pd.DataFrame(
        {
            "condition": [photo.condition for photo in photos],
            "file": [photo.name for photo in photos],
            "label": [photo.label for photo in photos],
        }
    )
    return _scored(table, *prepare_photos(photos, workers), model, temperature, batch_size)


def _scored(
    table: pd.DataFrame,
    images: np.ndarray,
    refused: np.ndarray,
    model: torch.nn.Module,
    temperature: float,
    batch_size: int,
) -> pd.DataFrame:
    table["refused"] = refused
    table["predicted"] = pd.Series(pd.NA, index=table.index, dtype="Int64")
    table["confidence"], table["ood_score"] = np.nan, np.nan
    if len(images):
        logits = predict_logits(model, torch.from_numpy(images), batch_size).numpy()
        accepted = ~table["refused"].to_numpy()
        table.loc[accepted, "predicted"] = logits.argmax(1)
        confidence = softmax(logits, temperature).max(1)
        table.loc[accepted, "confidence"] = confidence.round(6)
        table.loc[accepted, "ood_score"] = ood.score(logits).round(ood.THRESHOLD_DECIMALS)
    return table


def right_answers(table: pd.DataFrame) -> pd.Series:
    """Per row of a `scored_pages` table of digits: the class is the digit its page shows
    (refused pages are not right)."""
    return (table["predicted"].astype("string") == table["item"]).fillna(False)


def outcomes(table: pd.DataFrame, threshold: float) -> pd.Series:
    """Per row of a `scored_photos` table, its outcome (one of OUTCOMES) under the threshold."""
    flagged = ood.flagged(table["ood_score"].fillna(-np.inf).to_numpy(), threshold)
    right = (table["predicted"] == table["label"]).fillna(False).to_numpy(dtype=bool)
    outcome = np.where(right, RIGHT, "wrong")
    outcome = np.where(flagged, "flagged", outcome)
    outcome = np.where(table["refused"].to_numpy(dtype=bool), "refused", outcome)
    return pd.Series(outcome, index=table.index)


def scored_rows(
    found: list[Row], model: torch.nn.Module, threshold: float, batch_size: int, workers: int = 1
) -> pd.DataFrame:
    """One row per photographed row, read as the predict command's --number reads it: its
    kind, file, truth, what was read ("?" for a flagged digit, empty when refused), how many
    digits were found, and the outcome: refused, flagged (a digit unknown), right or wrong
    (a word read as a number is wrong)."""

    def segmented(row: Row) -> list[Digit] | None:
        try:
            return digits_of_row(load_grey(io.BytesIO(row.data), row.name))
        except ImageError:
            return None

    with ThreadPoolExecutor(max(1, workers)) as executor:
        found_digits = list(executor.map(segmented, found))
    images = [digit.image for digits in found_digits if digits for digit in digits]
    stacked = np.stack(images) if images else np.empty((0, *IMAGE_SHAPE), np.uint8)
    logits = predict_logits(model, torch.from_numpy(stacked), batch_size).numpy()
    labels = logits.argmax(1)
    flagged = ood.flagged(ood.score(logits), threshold)
    read, sizes, start = [], [], 0
    for digits in found_digits:
        count = len(digits) if digits is not None else 0
        classes = labels[start : start + count].astype(str)
        unknown = flagged[start : start + count]
        read.append(number_text([None if f else c for c, f in zip(classes, unknown, strict=True)]))
        sizes.append(count)
        start += count
    outcome = [
        "refused"
        if digits is None
        else "flagged"
        if "?" in text
        else RIGHT
        if text == row.truth
        else "wrong"
        for row, digits, text in zip(found, found_digits, read, strict=True)
    ]
    return pd.DataFrame(
        {
            "kind": [row.kind for row in found],
            "file": [row.name for row in found],
            "truth": [row.truth for row in found],
            "read": read,
            "digits": sizes,
            "outcome": outcome,
        }
    )
