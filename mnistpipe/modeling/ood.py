"""Out-of-distribution detection: the score that says an input is not a digit, its threshold,
and the figures that say how well they work.

The score is the negated largest logit (the max-logit score, Hendrycks et al., 2022): low on
inputs like the training data, high on others. It was chosen by measurement against the energy
score (Liu et al., 2020) and the max softmax probability on five trained models: it answered
3-4 points more foreign digits at the same share of flagged validation digits, for about one
point fewer scribbles flagged (benchmarks/results-ood.md measures the canonical model). It
needs no exp or log, so its value is the same bytes on every CPU. The model learns to give
non-digits flat, low logits by outlier exposure (training.py, synthetic.py). The threshold is
fitted on the validation split so that a chosen share of real digits is flagged; it travels in
the checkpoint and in the ONNX metadata, and the ONNX graph computes the score itself.
"""

from __future__ import annotations

import numpy as np

SCORE_NAME = "max-logit"
THRESHOLD_DECIMALS = 4  # the threshold is rounded up to this: a short number in the metadata


def metric(kind: str, figure: str) -> str:
    """The metrics.json key of one figure of one kind of input: ("foreign digits",
    "rejected") -> "ood_foreign_digits_rejected"."""
    return f"ood_{kind.replace(' ', '_')}_{figure}"


def score(logits: np.ndarray) -> np.ndarray:
    """(N, C) logits -> (N,) float64 scores, -max(logits); higher is less digit-like."""
    return -np.asarray(logits, dtype=np.float64).max(axis=1)


def fit_threshold(scores: np.ndarray, rejection: float) -> float:
    """The threshold above which a share `rejection` of these (validation) scores lies, at
    most: an image is flagged when its score is strictly greater."""
    quantile = np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - rejection, method="higher")
    return float(np.ceil(quantile * 10**THRESHOLD_DECIMALS) / 10**THRESHOLD_DECIMALS)


def flagged(scores: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) bool: which scores say "not like the training data"."""
    return np.asarray(scores) > threshold


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve of the score telling `out` (positive) from `in`: 1 separates
    them perfectly, 0.5 is chance. Refused inputs enter as +inf: the system rejects them."""
    labels = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    scores = np.concatenate([in_scores, out_scores])
    finite = np.nan_to_num(scores, posinf=np.finfo(np.float64).max)
    # Imported here: only evaluate needs it, and scikit-learn's import costs train, export
    # and report 0.7-0.9 s each.
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, finite))
