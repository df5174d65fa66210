"""Stage `evaluate`: score the checkpoint on the untouched test set.

Writes the metrics JSON (only values a rerun reproduces), the labelled confusion matrix,
per-class precision/recall/F1, one `actual,predicted,confidence` row per test image (also for
DVC's confusion plot), the misclassified images with their top-2 classes, and the reliability
table of the confidence before and after the checkpoint's temperature. Confidences in the CSVs
are calibrated, as the apps show them. For an MNIST model, also the accuracy on foreign
digits (scikit-learn's, photographed-style pages put through the predict command's
preprocessing). Reads params `evaluate`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mnistpipe import numerics, processed
from mnistpipe.calibration import (
    expected_calibration_error,
    negative_log_likelihood,
    reliability_table,
    softmax,
)
from mnistpipe.checkpoints import load_checkpoint, require_same_dataset
from mnistpipe.cli import run_stage
from mnistpipe.files import write_text_atomic
from mnistpipe.imaging import foreign_digit_pages, to_mnist
from mnistpipe.metrics import (
    confusion_table,
    misclassified_table,
    per_class_table,
    summary_metrics,
)
from mnistpipe.models import predict_logits
from mnistpipe.params import PARAMS_FILE, EvaluateParams, load_section
from mnistpipe.training import select_device

log = logging.getLogger("evaluate")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="processed-data folder")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to score")
    outputs = ("metrics", "confusion", "per-class", "predictions", "misclassified", "calibration")
    for name in outputs:
        parser.add_argument(f"--{name}", type=Path, required=True, help=f"{name} file to write")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    params = load_section(EvaluateParams, args.params)
    numerics.apply(params.numerics)

    checkpoint = load_checkpoint(args.model)
    meta = processed.load_meta(args.data)
    require_same_dataset(checkpoint, meta, args.model, args.data)
    test = processed.load_split(args.data, "test")
    model = checkpoint.build().to(select_device(params.device))
    logits = predict_logits(model, torch.from_numpy(test.images), params.batch_size)
    labels, predicted = test.labels.astype(np.int64), logits.argmax(1).numpy()
    metrics = summary_metrics(labels, logits)
    if meta.dataset == "mnist":  # foreign digits are digits: other datasets skip them
        metrics |= foreign_digits(model, checkpoint.temperature, params.batch_size)
    calibration_metrics, reliability = calibration(logits.numpy(), labels, checkpoint.temperature)
    metrics |= calibration_metrics
    probabilities = softmax(logits.numpy(), checkpoint.temperature)

    write_text_atomic(args.metrics, json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(args.confusion, confusion_table(labels, predicted, meta.classes).to_csv())
    write_text_atomic(args.per_class, per_class_table(labels, predicted, meta.classes).to_csv())
    confidence = probabilities.max(1).round(6)
    predictions = pd.DataFrame(
        {"actual": labels, "predicted": predicted, "confidence": confidence}
    )
    write_text_atomic(args.predictions, predictions.to_csv(index=False))
    misclassified = misclassified_table(labels, probabilities)
    write_text_atomic(args.misclassified, misclassified.to_csv(index=False))
    write_text_atomic(args.calibration, reliability.to_csv(index=False))
    log.info(
        "test accuracy %.4f, %d misclassified; ECE %.4f, %.4f at temperature %.4f",
        metrics["accuracy"],
        metrics["misclassified"],
        metrics["ece_uncalibrated"],
        metrics["ece_calibrated"],
        checkpoint.temperature,
    )


def foreign_digits(model: torch.nn.Module, temperature: float, batch_size: int) -> dict:
    """Accuracy on `imaging.foreign_digit_pages`, prepared as the predict command does, and
    the mean calibrated confidence the model has in its answers there."""
    pages, labels = foreign_digit_pages()
    images = torch.from_numpy(np.stack([to_mnist(page) for page in pages]))
    probabilities = softmax(predict_logits(model, images, batch_size).numpy(), temperature)
    return {
        "foreign_digits_accuracy": round(float(np.mean(probabilities.argmax(1) == labels)), 6),
        "foreign_digits_confidence": round(float(probabilities.max(1).mean()), 6),
    }


def calibration(
    logits: np.ndarray, labels: np.ndarray, temperature: float
) -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics of the confidence before and after the temperature (ECE over 15 bins, and the
    calibrated loss), and the reliability tables of both, told apart by `probabilities`."""
    metrics: dict[str, float] = {"temperature": temperature}
    tables = []
    for name, t in (("uncalibrated", 1.0), ("calibrated", temperature)):
        probabilities = softmax(logits, t)
        metrics[f"ece_{name}"] = round(expected_calibration_error(probabilities, labels), 6)
        tables.append(reliability_table(probabilities, labels).assign(probabilities=name))
    metrics["loss_calibrated"] = round(negative_log_likelihood(logits, labels, temperature), 6)
    table = pd.concat(tables, ignore_index=True)
    return metrics, table[["probabilities", *tables[0].columns.drop("probabilities")]]


if __name__ == "__main__":
    run_stage(main, "evaluate")
