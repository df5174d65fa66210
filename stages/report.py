"""Stage `report`: reports/report.md, its figures and reports/model_card.md, from the tracked
outputs of the run.

Reads only files that earlier stages wrote (metrics, history, per-class, prediction,
misclassified, calibration and OOD CSVs, class counts, the checkpoint, the ONNX file's hash and the
test images; it runs no model), so the same run always gives the same report. Reads params
`report`; shows `seed`, `data` and `preprocess`, and the model and training recipe as the
checkpoint records them.
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from mnistpipe.cli import run_stage
from mnistpipe.config import PARAMS_FILE, Sections, Seed, load_sections
from mnistpipe.data import processed
from mnistpipe.data.datasets import DataParams
from mnistpipe.data.processed import PreprocessParams, Split
from mnistpipe.deploy.imaging import ImageError, prepare_bytes
from mnistpipe.files import sha256_file, write_bytes_atomic
from mnistpipe.modeling import ood
from mnistpipe.modeling.calibration import ECE_BINS
from mnistpipe.modeling.checkpoints import Checkpoint, load_checkpoint
from mnistpipe.modeling.photos import OUTCOMES, photo_metric, photos
from mnistpipe.modeling.synthetic import LETTER_FONTS
from mnistpipe.reporting import figures
from mnistpipe.reporting.figures import ReportParams
from mnistpipe.reporting.markdown import render
from mnistpipe.reporting.model_card import ModelFile, model_card

RUN_SECTIONS = ("seed", "data", "preprocess")  # shown with the checkpoint's model and recipe


class ReportSections(Sections):
    seed: Seed
    data: DataParams
    preprocess: PreprocessParams
    report: ReportParams


def confused_pairs(confusion: pd.DataFrame, count: int) -> pd.DataFrame:
    """The `count` most frequent (actual, predicted) errors, most frequent first."""
    pairs = confusion.rename_axis(index="actual", columns="predicted").stack()
    pairs = pairs.rename("count").reset_index()
    errors = pairs[pairs["actual"] != pairs["predicted"]]
    errors = errors[errors["count"] > 0]
    return errors.sort_values(["count", "actual", "predicted"], ascending=[False, True, True])[
        :count
    ]


@dataclass(frozen=True)
class RunTables:
    """The metrics files of a run, each read once."""

    metrics: dict
    history: pd.DataFrame
    per_class: pd.DataFrame
    confusion: pd.DataFrame  # counts; index: actual class names, columns: predicted
    misclassified: pd.DataFrame
    predictions: pd.DataFrame  # actual, predicted, confidence of each test image, in order
    class_counts: pd.DataFrame
    calibration: pd.DataFrame  # reliability bins before and after the temperature
    ood: pd.DataFrame  # one row per synthetic non-digit or foreign digit: refused, score
    photos: pd.DataFrame  # one row per photographed test digit: condition, file, outcome

    @classmethod
    def read(cls, metrics_dir: Path) -> RunTables:
        confusion = pd.read_csv(
            metrics_dir / "confusion_matrix.csv", index_col="actual", dtype=str
        )
        return cls(
            metrics=json.loads((metrics_dir / "metrics.json").read_text(encoding="utf-8")),
            history=pd.read_csv(metrics_dir / "history.csv"),
            per_class=pd.read_csv(metrics_dir / "per_class.csv", dtype={"class": str}),
            confusion=confusion.astype(int),
            misclassified=pd.read_csv(metrics_dir / "misclassified.csv"),
            predictions=pd.read_csv(metrics_dir / "predictions.csv"),
            class_counts=pd.read_csv(metrics_dir / "class_counts.csv", index_col="class"),
            calibration=pd.read_csv(metrics_dir / "calibration.csv"),
            ood=pd.read_csv(metrics_dir / "ood.csv", dtype={"item": str}),
            photos=pd.read_csv(metrics_dir / "photos.csv"),
        )


def figures_of_run(
    run: RunTables, test: Split, checkpoint: Checkpoint, params: ReportParams, seed: int
) -> dict[str, bytes]:
    """PNG name -> bytes of every figure of the report."""
    classes = checkpoint.classes
    wrong = run.misclassified[: params.misclassified_shown]
    wrong_captions = [
        f"{classes[row.actual]} → {classes[row.predicted]} ({row.confidence:.2f})"
        for row in wrong.itertuples()
    ]
    samples = run.predictions[: params.samples_shown]  # the first test images, as evaluated
    sample_captions = [
        f"{classes[row.predicted]} ({row.confidence:.2f})"
        + ("" if row.predicted == row.actual else " ✗")
        for row in samples.itertuples()
    ]
    return {
        "confusion_matrix.png": figures.confusion_heatmap(run.confusion),
        "training_curves.png": figures.training_curves(run.history),
        "misclassified.png": figures.digit_grid(
            test.images[wrong["index"].to_numpy()],
            wrong_captions,
            "Misclassified test digits: actual → predicted (confidence)",
        ),
        "samples.png": figures.digit_grid(
            test.images[: len(samples)], sample_captions, "Sample test predictions (confidence)"
        ),
        "class_distribution.png": figures.class_distribution(run.class_counts),
        "reliability.png": figures.reliability_diagram(run.calibration),
        "ood_scores.png": figures.ood_histograms(
            run.predictions["ood_score"].to_numpy(), run.ood, checkpoint.ood_threshold
        ),
    } | ({"photos.png": photo_figure(run.photos, test, seed)} if len(run.photos) else {})


PHOTOS_SHOWN = 2  # per condition: the first photos evaluate took


def photo_figure(scored: pd.DataFrame, test: Split, seed: int) -> bytes:
    """The first photos of each condition, drawn again from the seed as evaluate drew them,
    beside what the preprocessing made of them, captioned with evaluate's outcome."""
    per_condition = int(scored.groupby("condition").size().min())  # evaluate.photos
    shown = min(PHOTOS_SHOWN, per_condition)
    taken = photos(test.images, test.labels.astype("int64"), shown, seed)
    outcome = dict(zip(scored["file"], scored["outcome"], strict=True))
    examples = []
    for photo in taken:
        try:
            seen = prepare_bytes(photo.data, photo.name)
        except ImageError:
            seen = None
        with Image.open(io.BytesIO(photo.data)) as image:
            image.thumbnail((160, 160))
            page = np.asarray(image.convert("RGB"))
        caption = f"{photo.condition}: {photo.label}, {outcome[photo.name].replace('_', ' ')}"
        examples.append((page, seen, caption))
    return figures.photo_examples(examples)


def photo_table(run: RunTables) -> pd.DataFrame:
    """Per condition of the photos: how many, and the share of each outcome (metrics.json)."""
    rows = []
    for condition, items in run.photos.groupby("condition", sort=False):
        row = {"condition": condition, "photos": len(items)}
        for outcome in OUTCOMES:
            row[outcome.replace("_", " ")] = run.metrics[photo_metric(str(condition), outcome)]
        rows.append(row)
    return pd.DataFrame(rows)


def ood_table(run: RunTables) -> pd.DataFrame:
    """Per kind of evaluate's OOD table: images, and the shares refused by the preprocessing,
    flagged by the score and rejected (either), with the AUROC or, for digits, the share
    answered and right; from metrics.json."""
    rows = []
    for kind, items in run.ood.groupby("kind", sort=False):
        row = {"kind": kind, "images": len(items)}
        for column in ("refused", "flagged", "rejected", "auroc", "answered_right"):
            row[column] = run.metrics.get(ood.metric(str(kind), column))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.astype(object).where(table.notna(), None)  # None: an empty cell, not "nan"


def passing_letters(run: RunTables, classes: tuple[str, ...], threshold: float) -> str:
    """The letters that pass as a class (neither refused nor flagged), grouped by letter."""
    letters = run.ood[run.ood["kind"] == "letters"]
    passed = letters[~letters["refused"] & (letters["ood_score"] <= threshold)]
    if passed.empty:
        return "none"
    named = passed.assign(letter=passed["item"].str.split().str[0])
    groups = named.groupby("letter", sort=True)["predicted"]
    return ", ".join(
        f"{letter} → {'/'.join(sorted({classes[int(p)] for p in predicted}))} ({len(predicted)})"
        for letter, predicted in groups
    )


def report_markdown(
    run: RunTables,
    sizes: dict[str, int],
    checkpoint: Checkpoint,
    run_params: dict,
    params: ReportParams,
) -> str:
    metrics, per_class = run.metrics, run.per_class
    table = pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())})
    weakest = per_class.sort_values(["f1", "class"])[: params.weakest_classes]
    values = {
        "dataset": checkpoint.dataset,
        "sizes": sizes,
        "m": metrics,
        "metrics_table": table.to_markdown(index=False),
        "per_class_table": per_class.to_markdown(index=False, floatfmt=".4f"),
        "weakest": weakest.to_dict("records"),
        "pairs_table": confused_pairs(run.confusion, params.confused_pairs).to_markdown(
            index=False
        ),
        "ece_bins": ECE_BINS,
        "score_name": ood.SCORE_NAME,
        "ood_threshold": checkpoint.ood_threshold,
        "ood_rejection": checkpoint.recipe.ood_rejection,
        "ood_table": ood_table(run).to_markdown(index=False, floatfmt=".4f"),
        "photo_table": photo_table(run).to_markdown(index=False, floatfmt=".4f")
        if len(run.photos)
        else "",
        "letter_fonts": len(LETTER_FONTS),
        "passing_letters": passing_letters(run, checkpoint.classes, checkpoint.ood_threshold),
        "epoch": checkpoint.epoch,
        "epochs": len(run.history),
        "val_accuracy": checkpoint.val_accuracy,
        "device": checkpoint.device,
        "numerics": checkpoint.numerics,
        "torch_version": checkpoint.torch_version,
        "seed": run_params["seed"],
        "run_params_yaml": yaml.safe_dump(run_params, sort_keys=False).strip(),
    }
    return render("report.md.j2", values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__)
    parser.add_argument("--metrics", type=Path, required=True, help="folder of metrics files")
    parser.add_argument("--data", type=Path, required=True, help="processed-data folder")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint")
    parser.add_argument("--onnx", type=Path, required=True, help="exported model (its hash)")
    parser.add_argument("--out", type=Path, required=True, help="report folder to write")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    all_params = load_sections(ReportSections, args.params)
    params = all_params.report
    checkpoint = load_checkpoint(args.model)
    written = all_params.to_mapping()
    run_params = {key: written[key] for key in RUN_SECTIONS}
    run_params |= {"model": checkpoint.model_section(), "train": checkpoint.recipe.to_mapping()}
    run = RunTables.read(args.metrics)
    test = processed.load_split(args.data, "test")
    outputs = figures_of_run(run, test, checkpoint, params, all_params.seed)  # name -> bytes
    sizes = processed.load_meta(args.data).sizes
    outputs["report.md"] = report_markdown(run, sizes, checkpoint, run_params, params).encode()
    files = [
        ModelFile(str(args.model), sha256_file(args.model), "PyTorch checkpoint"),
        ModelFile(
            str(args.onnx),
            sha256_file(args.onnx),
            "ONNX, for ONNX Runtime without PyTorch (the DVC artifact `classifier`)",
        ),
    ]
    pairs = confused_pairs(run.confusion, params.confused_pairs)
    card = model_card(checkpoint, run.metrics, run.per_class, run.class_counts, pairs, files)
    outputs["model_card.md"] = card.encode()
    write_folder(args.out, outputs)


def write_folder(folder: Path, outputs: dict[str, bytes]) -> None:
    """Write every file (each atomically), then delete what an earlier run left that this one
    did not write: DVC keeps the folder in place while the stage runs (`persist`)."""
    for name, data in outputs.items():
        write_bytes_atomic(folder / name, data)
    for path in folder.iterdir():
        if path.is_file() and path.name not in outputs:
            path.unlink()


if __name__ == "__main__":
    run_stage(main, "report")
