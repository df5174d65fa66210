"""Classify your own images: `python -m apps.predict PATH... [--model FILE]`.

Each image (PNG, JPEG, BMP, GIF, TIFF; any size, grey or colour, with or without alpha) is
turned into MNIST's format the way MNIST was made, then classified in batches by the exported
model (`models/model.onnx`) on ONNX Runtime: no PyTorch is imported, so one image takes well
under a second. Probabilities are calibrated, and labels are the model's class names. Folders
are walked. A file that cannot be classified gets an error line and the others go on; the
exit code is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from mnistpipe.cli import run_stage
from mnistpipe.errors import PipelineError
from mnistpipe.imaging import ImageError, find_images, prepare
from mnistpipe.onnx_model import classify, load_onnx

DEFAULT_MODEL = Path("models/model.onnx")  # the export stage's output (dvc.yaml's onnx_file)


def write_results(
    paths: list[Path], probabilities: np.ndarray, classes: tuple[str, ...], style: str
) -> None:
    """One row per image: its path, the most probable class's name and that probability."""
    best = probabilities.argmax(axis=1)
    rows = [
        (str(path), classes[int(index)], float(row[index]))
        for path, index, row in zip(paths, best, probabilities, strict=True)
    ]
    if style == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "label", "confidence"])
        writer.writerows((path, label, f"{conf:.4f}") for path, label, conf in rows)
    elif style == "json":
        for (path, label, conf), probs in zip(rows, probabilities.tolist(), strict=True):
            each = {name: round(p, 6) for name, p in zip(classes, probs, strict=True)}
            record = {"path": path, "label": label, "confidence": round(conf, 6)}
            print(json.dumps({**record, "probabilities": each}))
    else:
        width = max([len("path"), *(len(path) for path, _, _ in rows)])
        label_width = max([len("label"), *(len(label) for _, label, _ in rows)])
        print(f"{'path':<{width}}  {'label':>{label_width}}  confidence")
        for path, label, conf in rows:
            print(f"{path:<{width}}  {label:>{label_width}}  {conf:>10.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m apps.predict", description=__doc__)
    parser.add_argument("paths", type=Path, nargs="+", help="image files or folders of them")
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="exported ONNX model to use"
    )
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    args = parser.parse_args(argv)
    model = load_onnx(args.model)

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
        write_results(good, classify(model, np.stack(images)), model.classes, args.format)
    if failures:
        print(f"predict: {failures} of {len(files)} files failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_stage(main, "predict")
