"""Calibrated confidence: temperature scaling (Guo et al., 2017) and the calibration error.

A network trained with label smoothing is systematically unsure: its top probability sits
near 0.9 even on clear digits. Dividing the logits by one temperature T, fitted on the
validation split by minimising the negative log-likelihood, fixes that without changing any
prediction. NumPy in float64 only, so the fit gives the same T wherever it runs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al.
TEMPERATURE_RANGE = (0.05, 20.0)  # searched on a log scale; far beyond any sensible value
TEMPERATURE_DECIMALS = 4  # rounding makes T identical across CPUs' exp/log last bits


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, C) logits -> (N, C) float64 probabilities of softmax(logits / temperature)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean cross-entropy of softmax(logits / temperature) against the integer labels."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(log_norm - shifted[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, steps: int = 80) -> float:
    """The T in TEMPERATURE_RANGE minimising the NLL, by golden-section search on log T (the
    NLL is convex in 1/T, so unimodal in log T), rounded to TEMPERATURE_DECIMALS."""
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(steps):
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return round(math.exp((low + high) / 2), TEMPERATURE_DECIMALS)


def _binned(
    probabilities: np.ndarray, labels: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin: images, accuracy and mean confidence (NaN for an empty bin)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin b holds lower < confidence <= upper; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
    return count, accuracy, mean_confidence


def reliability_table(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> pd.DataFrame:
    """Per confidence bin ((lower, upper], equal widths): images, accuracy, mean confidence."""
    count, accuracy, confidence = _binned(probabilities, labels, bins)
    edges = np.linspace(0.0, 1.0, bins + 1).round(6)
    return pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "images": count,
            "accuracy": accuracy.round(6),
            "confidence": confidence.round(6),
        }
    )


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Sum over bins of (share of images) x |accuracy - mean confidence|."""
    count, accuracy, confidence = _binned(probabilities, labels, bins)
    filled = count > 0
    gaps = np.abs(accuracy[filled] - confidence[filled])
    return float((count[filled] * gaps).sum() / len(labels))
