"""Stage `evaluate`: score the checkpoint on the untouched test set.

Writes the metrics JSON (only values a rerun reproduces), the labelled confusion matrix,
per-class precision/recall/F1, one `actual,predicted,confidence` row per test image (also for
DVC's confusion plot), the misclassified images with their top-2 classes, and the reliability
table of the confidence before and after the checkpoint's temperature. Confidences in the CSVs
are calibrated, as the apps show them. For a model of the digits 0-9, also the accuracy on foreign
digits (scikit-learn's, photographed-style pages put through the predict command's
preprocessing).

Out of distribution: the test images' OOD scores (in the predictions CSV), the share the
checkpoint's threshold flags and the accuracy on the rest; and for each kind of synthetic
non-digit (synthetic.OOD_KINDS, drawn from `seed`) and the foreign digits, one row per image
in the OOD CSV, and the shares refused by the preprocessing, flagged by the score, and both
(rejected), with the score's AUROC against the test digits. Reads params `seed` and
`evaluate`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mnistpipe.cli import run_stage
from mnistpipe.config import PARAMS_FILE, Sections, Seed, load_sections
from mnistpipe.data import processed
from mnistpipe.data.datasets import DIGITS
from mnistpipe.files import write_text_atomic
from mnistpipe.modeling import ood
from mnistpipe.modeling.calibration import (
    expected_calibration_error,
    negative_log_likelihood,
    reliability_table,
    softmax,
)
from mnistpipe.modeling.checkpoints import load_checkpoint, require_same_dataset
from mnistpipe.modeling.device import RuntimeParams, apply_numerics, select_device
from mnistpipe.modeling.metrics import (
    EvaluateParams,
    confusion_table,
    misclassified_table,
    per_class_table,
    summary_metrics,
)
from mnistpipe.modeling.models import predict_logits
from mnistpipe.modeling.page_scores import (
    FOREIGN,
    evenly_spread,
    foreign_pages,
    outcomes,
    right_answers,
    scored_pages,
    scored_photos,
    scored_rows,
)
from mnistpipe.modeling.photos import OUTCOMES, RIGHT, number_rows, photo_metric, photos
from mnistpipe.modeling.synthetic import OOD_KINDS, ood_pages

log = logging.getLogger("evaluate")


class EvaluateSections(Sections):
    seed: Seed
    evaluate: EvaluateParams
    runtime: RuntimeParams


# The files it writes, each given as --NAME PATH (dvc.yaml names the paths)
OUTPUTS = (
    "metrics",
    "confusion",
    "per-class",
    "predictions",
    "misclassified",
    "calibration",
    "ood",
    "photos",
    "numbers",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="processed-data folder")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to score")
    for name in OUTPUTS:
        parser.add_argument(f"--{name}", type=Path, required=True, help=f"{name} file to write")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    all_params = load_sections(EvaluateSections, args.params)
    params, runtime, seed = all_params.evaluate, all_params.runtime, all_params.seed
    torch.set_num_threads(runtime.threads or os.cpu_count() or 1)
    apply_numerics(runtime.numerics)  # after the thread count, which resets MKL's

    checkpoint = load_checkpoint(args.model)
    meta = processed.load_meta(args.data)
    require_same_dataset(checkpoint, meta, args.model, args.data)
    test = processed.load_split(args.data, "test")
    model, batch = checkpoint.build().to(select_device(runtime.device)), params.batch_size
    logits = predict_logits(model, torch.from_numpy(test.images), batch)
    labels, predicted = test.labels.astype(np.int64), logits.argmax(1).numpy()
    metrics = summary_metrics(labels, logits)
    calibration_metrics, reliability = calibration(logits.numpy(), labels, checkpoint.temperature)
    metrics |= calibration_metrics
    probabilities = softmax(logits.numpy(), checkpoint.temperature)
    scores = ood.score(logits.numpy())
    kinds = {kind: ood_pages(kind, seed) for kind in OOD_KINDS}
    if meta.classes == DIGITS:  # foreign digits are digits: other datasets skip them
        kinds[FOREIGN] = foreign_pages()
    kinds = {kind: evenly_spread(pages, params.non_digit_share) for kind, pages in kinds.items()}
    ood_table = pd.concat(
        [
            scored_pages(kind, pages, model, checkpoint.temperature, batch)
            for kind, pages in kinds.items()
        ],
        ignore_index=True,
    )
    metrics |= ood_metrics(scores, predicted == labels, ood_table, checkpoint.ood_threshold)
    count = params.photos if meta.classes == DIGITS else 0  # other datasets are not digits
    workers = torch.get_num_threads()  # runtime.threads, or every core
    taken = photos(test.images, test.labels.astype(np.int64), count, seed, workers)
    photo_table = scored_photos(taken, model, checkpoint.temperature, batch, workers)
    photo_table["outcome"] = outcomes(photo_table, checkpoint.ood_threshold)
    if count:
        metrics |= photo_metrics(photo_table)
    count = params.numbers if meta.classes == DIGITS else 0
    taken_rows = number_rows(test.images, test.labels.astype(np.int64), count, seed)
    number_table = scored_rows(taken_rows, model, checkpoint.ood_threshold, batch, workers)
    if count:
        metrics |= number_metrics(number_table)

    write_text_atomic(args.metrics, json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(args.confusion, confusion_table(labels, predicted, meta.classes).to_csv())
    write_text_atomic(args.per_class, per_class_table(labels, predicted, meta.classes).to_csv())
    predictions = predictions_table(labels, predicted, probabilities, scores)
    write_text_atomic(args.predictions, predictions.to_csv(index=False))
    misclassified = misclassified_table(labels, probabilities)
    write_text_atomic(args.misclassified, misclassified.to_csv(index=False))
    write_text_atomic(args.calibration, reliability.to_csv(index=False))
    write_text_atomic(args.ood, ood_table.to_csv(index=False))
    write_text_atomic(args.photos, photo_table.to_csv(index=False))
    write_text_atomic(args.numbers, number_table.to_csv(index=False))
    log.info(
        "%s threshold %.4f flags %.2f%% of the test digits; rejected: %s",
        ood.SCORE_NAME,
        checkpoint.ood_threshold,
        100 * metrics["ood_test_flagged"],
        ", ".join(f"{kind} {100 * metrics[ood.metric(kind, 'rejected')]:.1f}%" for kind in kinds),
    )
    log.info(
        "test accuracy %.4f, %d misclassified; ECE %.4f, %.4f at temperature %.4f",
        metrics["accuracy"],
        metrics["misclassified"],
        metrics["ece_uncalibrated"],
        metrics["ece_calibrated"],
        checkpoint.temperature,
    )


def predictions_table(
    labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray, scores: np.ndarray
) -> pd.DataFrame:
    """One row per test image: its class, the predicted one, the calibrated confidence and
    the OOD score (also DVC's confusion plot)."""
    return pd.DataFrame(
        {
            "actual": labels,
            "predicted": predicted,
            "confidence": probabilities.max(1).round(6),
            "ood_score": scores.round(ood.THRESHOLD_DECIMALS),
        }
    )


def ood_metrics(
    test_scores: np.ndarray, test_correct: np.ndarray, table: pd.DataFrame, threshold: float
) -> dict[str, float]:
    """The threshold's effect on the test digits, and per kind of `table` the shares refused,
    flagged and rejected (either), and the AUROC of the score (refused pages count as
    +inf) against the test digits; for the foreign digits, also the share answered and right."""
    test_flagged = ood.flagged(test_scores, threshold)
    metrics = {
        "ood_threshold": threshold,
        "ood_test_flagged": round(float(test_flagged.mean()), 6),
        "ood_test_accuracy_accepted": round(float(test_correct[~test_flagged].mean()), 6),
    }
    for kind, rows in table.groupby("kind", sort=False):
        scores = rows["ood_score"].fillna(np.inf).to_numpy()
        refused = rows["refused"].to_numpy(dtype=bool)
        flagged = ood.flagged(scores, threshold) & ~refused
        kind = str(kind)
        metrics[ood.metric(kind, "refused")] = round(float(refused.mean()), 6)
        metrics[ood.metric(kind, "flagged")] = round(float(flagged.mean()), 6)
        metrics[ood.metric(kind, "rejected")] = round(float((refused | flagged).mean()), 6)
        if kind == FOREIGN:  # digits: being answered, and right, is the goal
            right = right_answers(rows)
            metrics["foreign_digits_accuracy"] = round(float(right.mean()), 6)
            metrics["foreign_digits_confidence"] = round(float(rows["confidence"].mean()), 6)
            answered_right = right.to_numpy(dtype=bool) & ~flagged
            metrics[ood.metric(kind, "answered_right")] = round(float(answered_right.mean()), 6)
        else:
            metrics[ood.metric(kind, "auroc")] = round(ood.auroc(test_scores, scores), 6)
    return metrics


def photo_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Per condition of the photos, the share of each outcome (page_scores.OUTCOMES), and the
    share answered right over all of them."""
    metrics = {}
    for condition, rows in table.groupby("condition", sort=False):
        shares = rows["outcome"].value_counts(normalize=True)
        for outcome in OUTCOMES:
            key = photo_metric(str(condition), outcome)
            metrics[key] = round(float(shares.get(outcome, 0.0)), 6)
    metrics["photo_answered_right"] = round(float((table["outcome"] == RIGHT).mean()), 6)
    return metrics


def number_metrics(table: pd.DataFrame) -> dict[str, float]:
    """The shares of the rows of digits read right, with a digit flagged, wrong and refused,
    and the share of the rows of printed letters read as a number (no digit flagged)."""
    digits = table[table["kind"] == "digits"]["outcome"].value_counts(normalize=True)
    metrics = {f"number_rows_{o}": round(float(digits.get(o, 0.0)), 6) for o in OUTCOMES}
    words = table[table["kind"] == "words"]["outcome"]
    metrics["number_words_read"] = round(float(words.isin([RIGHT, "wrong"]).mean()), 6)
    return metrics


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
