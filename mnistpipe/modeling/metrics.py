"""Test-set metrics of a model's logits: the numbers `evaluate` writes and the benchmark reads.

Floats are rounded to 6 decimals, so the files a rerun writes are the same bytes.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field

from mnistpipe.config import Config


class EvaluateParams(Config):
    batch_size: int = Field(
        ge=1, description="images per inference batch; does not change the results"
    )
    photos: int = Field(
        ge=0,
        le=10_000,
        description="test digits photographed under each condition of"
        " mnistpipe/modeling/photos.py and read through the predict command's decoding and"
        " preprocessing (digits datasets only; 0 skips them)",
    )
    numbers: int = Field(
        ge=0,
        le=10_000,
        description="photographed rows of 2-5 test digits read as numbers, as the predict"
        " command's --number reads them, and as many rows of printed letters (digits datasets"
        " only; 0 skips them)",
    )
    non_digit_share: float = Field(
        gt=0,
        le=1,
        description="share of the non-digit pages of each kind (synthetic.py) and of the"
        " foreign digits that are scored, evenly spread over each kind: 1 takes all 2,464; less"
        " makes a quicker evaluate, whose OOD figures compare only at the same share",
    )


def sklearn_metrics() -> ModuleType:
    """`sklearn.metrics`, imported on first use: train imports this module for `cross_entropy`,
    and importing scikit-learn would cost it 0.7-0.9 s."""
    import sklearn.metrics

    return sklearn.metrics


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy of (N, C) float32 logits against (N,) int64 labels: the `loss` of the
    training history and of the test metrics (calibration.py fits its temperature in float64)."""
    return F.cross_entropy(logits, labels).item()


def summary_metrics(labels: np.ndarray, logits: torch.Tensor) -> dict[str, float | int]:
    """Accuracy, mean cross-entropy, macro precision/recall/F1 and the misclassified count."""
    predicted = logits.argmax(1).numpy()
    loss = cross_entropy(logits, torch.from_numpy(labels).long())
    precision, recall, f1, _ = sklearn_metrics().precision_recall_fscore_support(
        labels, predicted, average="macro", zero_division=0
    )
    return {
        "accuracy": round(float(np.mean(predicted == labels)), 6),
        "loss": round(loss, 6),
        "precision_macro": round(float(precision), 6),
        "recall_macro": round(float(recall), 6),
        "f1_macro": round(float(f1), 6),
        "misclassified": int(np.sum(predicted != labels)),
        "test_images": len(labels),
    }


def confusion_table(labels: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]):
    """10x10 counts: rows are the actual class, columns the predicted one."""
    counts = sklearn_metrics().confusion_matrix(labels, predicted, labels=range(len(classes)))
    return pd.DataFrame(
        counts,
        index=pd.Index(classes, name="actual"),
        columns=pd.Index(classes, name="predicted"),
    )


def per_class_table(
    labels: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]
) -> pd.DataFrame:
    precision, recall, f1, support = sklearn_metrics().precision_recall_fscore_support(
        labels, predicted, labels=range(len(classes)), zero_division=0
    )
    table = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support},
        index=pd.Index(classes, name="class"),
    )
    return table.round(6)


def misclassified_table(labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """Test-set index, actual class and top-2 classes with probabilities of each error."""
    top_classes = np.argsort(-probabilities, axis=1, kind="stable")[:, :2]  # (N, 2)
    top_probs = np.take_along_axis(probabilities, top_classes, axis=1)
    wrong = np.flatnonzero(top_classes[:, 0] != labels)
    return pd.DataFrame(
        {
            "index": wrong,
            "actual": labels[wrong],
            "predicted": top_classes[wrong, 0],
            "confidence": top_probs[wrong, 0].round(6),
            "second": top_classes[wrong, 1],
            "second_confidence": top_probs[wrong, 1].round(6),
        }
    )
