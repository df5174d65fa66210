"""Stage `evaluate`: score the checkpoint on the untouched test set.

Writes the metrics JSON (only values a rerun reproduces), the labelled confusion matrix,
per-class precision/recall/F1, one `actual,predicted` row per test image for DVC's confusion
plot, and the misclassified images with their top-2 classes. Reads params `evaluate`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from mnistpipe import processed
from mnistpipe.cli import run_stage
from mnistpipe.errors import PipelineError
from mnistpipe.files import write_text_atomic
from mnistpipe.models import load_checkpoint, predict_logits
from mnistpipe.params import PARAMS_FILE, EvaluateParams, load_section
from mnistpipe.training import select_device

log = logging.getLogger("evaluate")


def summary_metrics(labels: np.ndarray, logits: torch.Tensor) -> dict[str, float | int]:
    """Accuracy, mean cross-entropy, macro precision/recall/F1 and the misclassified count."""
    predicted = logits.argmax(1).numpy()
    loss = F.cross_entropy(logits, torch.from_numpy(labels).long()).item()
    precision, recall, f1, _ = precision_recall_fscore_support(
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
    counts = confusion_matrix(labels, predicted, labels=range(len(classes)))
    return pd.DataFrame(
        counts,
        index=pd.Index(classes, name="actual"),
        columns=pd.Index(classes, name="predicted"),
    )


def per_class_table(
    labels: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]
) -> pd.DataFrame:
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(len(classes)), zero_division=0
    )
    table = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support},
        index=pd.Index(classes, name="class"),
    )
    return table.round(6)


def misclassified_table(labels: np.ndarray, logits: torch.Tensor) -> pd.DataFrame:
    """Test-set index, actual class and top-2 classes with probabilities of each error."""
    top_probs, top_classes = torch.softmax(logits, 1).topk(2, dim=1)
    wrong = np.flatnonzero(top_classes[:, 0].numpy() != labels)
    return pd.DataFrame(
        {
            "index": wrong,
            "actual": labels[wrong],
            "predicted": top_classes[wrong, 0].numpy(),
            "confidence": top_probs[wrong, 0].numpy().round(6),
            "second": top_classes[wrong, 1].numpy(),
            "second_confidence": top_probs[wrong, 1].numpy().round(6),
        }
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="processed-data folder")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to score")
    for name in ("metrics", "confusion", "per-class", "predictions", "misclassified"):
        parser.add_argument(f"--{name}", type=Path, required=True, help=f"{name} file to write")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    params = load_section(EvaluateParams, args.params)

    checkpoint = load_checkpoint(args.model)
    meta = processed.load_meta(args.data)
    if (meta.dataset, meta.classes) != (checkpoint.dataset, checkpoint.classes):
        raise PipelineError(
            f"{args.data} holds {meta.dataset} but {args.model} was trained on"
            f" {checkpoint.dataset}; rerun the pipeline (dvc repro)"
        )
    test = processed.load_split(args.data, "test")
    model = checkpoint.build().to(select_device(params.device))
    logits = predict_logits(
        model, torch.from_numpy(test.images), checkpoint.mean, checkpoint.std, params.batch_size
    )
    labels, predicted = test.labels.astype(np.int64), logits.argmax(1).numpy()
    metrics = summary_metrics(labels, logits)

    write_text_atomic(args.metrics, json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(args.confusion, confusion_table(labels, predicted, meta.classes).to_csv())
    write_text_atomic(args.per_class, per_class_table(labels, predicted, meta.classes).to_csv())
    predictions = pd.DataFrame({"actual": labels, "predicted": predicted})
    write_text_atomic(args.predictions, predictions.to_csv(index=False))
    write_text_atomic(args.misclassified, misclassified_table(labels, logits).to_csv(index=False))
    log.info("test accuracy %.4f, %d misclassified", metrics["accuracy"], metrics["misclassified"])


if __name__ == "__main__":
    run_stage(main, "evaluate")
