"""Classify your own images: `python -m apps.predict PATH... [--model FILE] [--guess]`.

Each image (PNG, JPEG, BMP, GIF, TIFF; any size, grey or colour, with or without alpha) is
turned into MNIST's format the way MNIST was made, then classified in batches by the exported
model (`models/model.onnx`) on ONNX Runtime: no PyTorch is imported, so one image takes well
under a second. Probabilities are calibrated, and labels are the model's class names. An image
whose out-of-distribution score is above the model's threshold does not look like the training
data: its label is `unknown` (empty in CSV, null in JSON) unless `--guess` asks for the best
guess anyway; the score is always shown. Folders are walked. A file that cannot be classified
(blank, a speck, not an image) gets an error line and the others go on; the exit code is 1
when any file failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from mnistpipe.cli import run_stage
from mnistpipe.deploy.imaging import ImageError, find_images, prepare
from mnistpipe.deploy.numbers import number_answer, row_of_file
from mnistpipe.deploy.onnx_model import Answers, OnnxClassifier, classify, load_onnx
from mnistpipe.errors import PipelineError

DEFAULT_MODEL = Path("models/model.onnx")  # the export stage's output (dvc.yaml's onnx_file)


UNKNOWN = "unknown"  # the table's label for an image that does not look like the training data


def write_results(
    paths: list[Path], answers: Answers, classes: tuple[str, ...], style: str, guess: bool
) -> None:
    """One row per image: its path, label, the most probable class's probability, OOD score
    and whether the score flags it; a flagged image's label is its best guess only if `guess`."""
    rows = []
    for path, answer in zip(paths, answers, strict=True):
        label = classes[answer.best] if guess or not answer.flagged else None
        rows.append((str(path), label, answer, float(answer.probabilities[answer.best])))
    if style == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "label", "confidence", "ood_score", "flagged"])
        writer.writerows(
            (path, label or "", f"{conf:.4f}", f"{answer.score:.4f}", answer.flagged)
            for path, label, answer, conf in rows
        )
    elif style == "json":
        for path, label, answer, conf in rows:
            probabilities = answer.probabilities.tolist()
            each = {name: round(p, 6) for name, p in zip(classes, probabilities, strict=True)}
            record = {"path": path, "label": label, "confidence": round(conf, 6)}
            record |= {"ood_score": round(answer.score, 4), "flagged": answer.flagged}
            print(json.dumps({**record, "probabilities": each}))
    else:
        shown = []
        for path, label, answer, conf in rows:
            if answer.flagged:  # "unknown", or "unknown (7?)" with --guess
                label = f"{UNKNOWN} ({label}?)" if label else UNKNOWN
            confidence = f"{conf:.4f}" if label != UNKNOWN else "-"
            shown.append((path, label, confidence, answer.score))
        width = max([len("path"), *(len(row[0]) for row in shown)])
        label_width = max([len("label"), *(len(row[1]) for row in shown)])
        print(f"{'path':<{width}}  {'label':>{label_width}}  confidence  ood_score")
        for path, label, confidence, score in shown:
            print(f"{path:<{width}}  {label:>{label_width}}  {confidence:>10}  {score:>9.3f}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the module docstring's paragraphs and names each flag's default."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m apps.predict", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("paths", type=Path, nargs="+", help="image files or folders of them")
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="exported ONNX model to use"
    )
    parser.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="how to print the answers: a table for people, CSV or JSON (one object per image)"
        " for programs",
    )
    parser.add_argument(
        "--number",
        action="store_true",
        help="read each image as a row of digits (a house number, a year): one answer per"
        " image, a string such as 2026 with ? where a digit does not look like one",
    )
    parser.add_argument(
        "--guess",
        action="store_true",
        help="give the best guess as the label even for images that do not look like the"
        " training data",
    )
    args = parser.parse_args(argv)
    model = load_onnx(args.model)

    files = find_images(args.paths)
    if not files:
        raise PipelineError(f"no image files found in {', '.join(map(str, args.paths))}")
    failures = read_numbers(files, model, args) if args.number else read_digits(files, model, args)
    if failures:
        print(f"predict: {failures} of {len(files)} files failed", file=sys.stderr)
        sys.exit(1)


def read_digits(files: list[Path], model: OnnxClassifier, args: argparse.Namespace) -> int:
    """Classify each file as one digit and print the answers; the number of files that
    failed (each with an error line)."""
    good, images, failures = [], [], 0
    for path in files:
        try:
            images.append(prepare(path))
            good.append(path)
        except ImageError as exc:
            print(f"predict: error: {exc}", file=sys.stderr)
            failures += 1
    if images:
        answers = classify(model, np.stack(images))
        write_results(good, answers, model.classes, args.format, args.guess)
        flagged = sum(answer.flagged for answer in answers)
        if flagged:
            print(
                f"predict: {flagged} of {len(images)} images do not look like"
                f" {model.metadata.subject} (OOD score above {model.metadata.ood_threshold:g})"
                + ("" if args.guess else "; --guess shows the best guess anyway"),
                file=sys.stderr,
            )
    return failures


def read_numbers(files: list[Path], model: OnnxClassifier, args: argparse.Namespace) -> int:
    """Read each file as a row of digits and print one number per file; the number of files
    that failed (each with an error line)."""
    rows, failures = [], 0
    for path in files:
        try:
            rows.append((path, row_of_file(path)))
        except ImageError as exc:
            print(f"predict: error: {exc}", file=sys.stderr)
            failures += 1
    images = [digit.image for _, digits in rows for digit in digits]
    answers = classify(model, np.stack(images) if images else np.empty((0, 28, 28), np.uint8))
    start, results = 0, []
    for path, digits in rows:
        part = answers.part(start, start + len(digits))
        start += len(digits)
        results.append((str(path), number_answer(digits, part, model.classes, args.guess)))
    if args.format == "json":
        for path, result in results:
            print(json.dumps({"path": path, **result}))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "number", "unknown"])
        writer.writerows((p, r["number"], " ".join(map(str, r["unknown"]))) for p, r in results)
    elif results:
        width = max(len("path"), *(len(path) for path, _ in results))
        print(f"{'path':<{width}}  number")
        for path, result in results:
            print(f"{path:<{width}}  {result['number']}")
    unknown = sum(bool(result["unknown"]) for _, result in results)
    if unknown and not args.guess:
        print(
            f"predict: {unknown} of {len(results)} numbers have digits that do not look like"
            f" {model.metadata.subject} (?); --guess shows the best guess anyway",
            file=sys.stderr,
        )
    return failures


if __name__ == "__main__":
    run_stage(main, "predict")
