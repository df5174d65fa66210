"""Classify your own digit images: `python -m apps.predict PATH... [--model FILE]`.

Each image (PNG, JPEG, BMP, GIF, TIFF; any size, grey or colour, with or without alpha) is
turned into MNIST's format the way MNIST was made, then classified in batches. Folders are
walked. A file that cannot be classified gets an error line and the others go on; the exit
code is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from apps.imaging import ImageError, find_images, prepare
from mnistpipe.checkpoints import load_checkpoint
from mnistpipe.cli import run_stage
from mnistpipe.errors import PipelineError
from mnistpipe.models import predict_probabilities

DEFAULT_MODEL = Path("models/model.pt")  # the train stage's output (dvc.yaml's model_file)


def write_results(
    paths: list[Path], probabilities: torch.Tensor, classes: tuple[str, ...], style: str
) -> None:
    confidence, digit = probabilities.max(dim=1)
    rows = [
        (str(path), classes[int(d)], float(c))
        for path, d, c in zip(paths, digit, confidence, strict=True)
    ]
    if style == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "digit", "confidence"])
        writer.writerows((path, label, f"{conf:.4f}") for path, label, conf in rows)
    elif style == "json":
        for (path, label, conf), probs in zip(rows, probabilities.tolist(), strict=True):
            ten = {name: round(p, 6) for name, p in zip(classes, probs, strict=True)}
            record = {"path": path, "digit": label, "confidence": round(conf, 6)}
            print(json.dumps({**record, "probabilities": ten}))
    else:
        width = max([len("path"), *(len(path) for path, _, _ in rows)])
        print(f"{'path':<{width}}  digit  confidence")
        for path, label, conf in rows:
            print(f"{path:<{width}}  {label:>5}  {conf:>10.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m apps.predict", description=__doc__)
    parser.add_argument("paths", type=Path, nargs="+", help="image files or folders of them")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint to use")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.model)

    files = find_images(args.paths)
    if not files:
        raise PipelineError(f"no image files found in {', '.join(map(str, args.paths))}")
    good, images, failures = [], [], 0
    for path in files:
        try:
            images.append(prepare(path))
            good.append(path)
        except ImageError as exc:
            print(f"predict: error: {exc}", file=sys.stderr)
            failures += 1
    if images:
        model = checkpoint.build()
        probabilities = predict_probabilities(model, np.stack(images), args.batch_size)
        write_results(good, probabilities, checkpoint.classes, args.format)
    if failures:
        print(f"predict: {failures} of {len(files)} files failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_stage(main, "predict")
