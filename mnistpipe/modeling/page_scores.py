"""Pages beyond the test set, through the predict command's preprocessing and a model.

The evaluate stage scores foreign digits and synthetic non-digits with these functions into
its OOD table and metrics; the benchmarks use the same ones, so each check exists once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mnistpipe.data.idx import IMAGE_SHAPE
from mnistpipe.deploy.imaging import ImageError, foreign_digit_pages, to_mnist
from mnistpipe.modeling import ood
from mnistpipe.modeling.calibration import softmax
from mnistpipe.modeling.models import predict_logits
from mnistpipe.modeling.synthetic import Page

FOREIGN = "foreign digits"  # the OOD table's kind for foreign_pages


def foreign_pages() -> list[Page]:
    """imaging.foreign_digit_pages, each named by its digit."""
    pages, labels = foreign_digit_pages()
    return list(zip(pages, map(str, labels), strict=True))


def prepare_pages(pages: list[Page]) -> tuple[np.ndarray, np.ndarray]:
    """The (M, 28, 28) uint8 images of the pages that the preprocessing accepts, and the (N,)
    bool mask of those it refused (blank, faint or speck ink: imaging.NoInkError)."""
    images, refused = [], []
    for page, _ in pages:
        try:
            images.append(to_mnist(page))
            refused.append(False)
        except ImageError:
            refused.append(True)
    stacked = np.stack(images) if images else np.empty((0, *IMAGE_SHAPE), np.uint8)
    return stacked, np.array(refused, dtype=bool)


def scored_pages(
    kind: str, pages: list[Page], model: torch.nn.Module, temperature: float, batch_size: int
) -> pd.DataFrame:
    """One row per page, prepared as the predict command does: what it is, whether the
    preprocessing refused it, and for those it did not the model's class, its calibrated
    probability and the OOD score (empty for refused pages)."""
    images, refused = prepare_pages(pages)
    table = pd.DataFrame(
        {"kind": kind, "item": [name for _, name in pages], "refused": refused},
    )
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
