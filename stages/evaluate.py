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

from mnistpipe import numerics, processed
from mnistpipe.checkpoints import load_checkpoint
from mnistpipe.cli import run_stage
from mnistpipe.errors import PipelineError
from mnistpipe.files import write_text_atomic
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
    for name in ("metrics", "confusion", "per-class", "predictions", "misclassified"):
        parser.add_argument(f"--{name}", type=Path, required=True, help=f"{name} file to write")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    params = load_section(EvaluateParams, args.params)
    numerics.apply(params.numerics)

    checkpoint = load_checkpoint(args.model)
    meta = processed.load_meta(args.data)
    if (meta.dataset, meta.classes) != (checkpoint.dataset, checkpoint.classes):
        raise PipelineError(
            f"{args.data} holds {meta.dataset} but {args.model} was trained on"
            f" {checkpoint.dataset}; rerun the pipeline (dvc repro)"
        )
    test = processed.load_split(args.data, "test")
    model = checkpoint.build().to(select_device(params.device))
    logits = predict_logits(model, torch.from_numpy(test.images), params.batch_size)
    labels, predicted = test.labels.astype(np.int64), logits.argmax(1).numpy()
    metrics = summary_metrics(labels, logits)

    write_text_atomic(args.metrics, json.dumps(metrics, indent=2) + "\n")
    write_text_atomic(args.confusion, confusion_table(labels, predicted, meta.classes).to_csv())
    write_text_atomic(args.per_class, per_class_table(labels, predicted, meta.classes).to_csv())
    confidence = torch.softmax(logits, 1).max(1).values.numpy().round(6)
    predictions = pd.DataFrame(
        {"actual": labels, "predicted": predicted, "confidence": confidence}
    )
    write_text_atomic(args.predictions, predictions.to_csv(index=False))
    write_text_atomic(args.misclassified, misclassified_table(labels, logits).to_csv(index=False))
    log.info("test accuracy %.4f, %d misclassified", metrics["accuracy"], metrics["misclassified"])


if __name__ == "__main__":
    run_stage(main, "evaluate")
