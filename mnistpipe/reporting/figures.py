"""The report's figures, drawn with matplotlib's Agg backend (no GUI) into PNG bytes.

The same data gives the same bytes: no timestamps or version strings go into the files.
"""

from __future__ import annotations

import io
from typing import Annotated

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from mnistpipe.config import Config, rule

ShownCount = Annotated[int, rule(lambda v: 1 <= v <= 100, "must be between 1 and 100")]
ListedCount = Annotated[int, rule(lambda v: 1 <= v <= 10, "must be between 1 and 10")]


class ReportParams(Config):
    misclassified_shown: ShownCount = Field(description="misclassified test digits in the grid")
    samples_shown: ShownCount = Field(description="sample test predictions in the grid")
    confused_pairs: ListedCount = Field(
        description="most confused (actual, predicted) pairs listed"
    )
    weakest_classes: ListedCount = Field(description="classes with the lowest F1 named")


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


LONG_LABEL = 2  # characters: class names longer than this are written at a slant


def confusion_heatmap(confusion: pd.DataFrame) -> bytes:
    return to_png(confusion_figure(confusion))


def confusion_figure(confusion: pd.DataFrame) -> Figure:
    """Counts with rows = actual class and columns = predicted class, diagonal included.
    Long class names (Fashion-MNIST's "T-shirt/top") are slanted under the x-axis so that
    neighbours never overlap."""
    counts = confusion.to_numpy()
    figure, axes = plt.subplots(figsize=(7, 6))
    # A log scale keeps the few errors visible next to the ~1000 correct per class.
    image = axes.imshow(np.log1p(counts), cmap="Blues")
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if count > counts.max() / 2 else "black"
        axes.text(col, row, str(count), ha="center", va="center", fontsize=8, color=colour)
    axes.set_xticks(range(len(confusion.columns)), confusion.columns)
    axes.set_yticks(range(len(confusion.index)), confusion.index)
    if max(len(str(name)) for name in confusion.columns) > LONG_LABEL:
        plt.setp(axes.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title("Confusion matrix (test set)")
    figure.colorbar(image, ax=axes, label="log(1 + count)")
    figure.tight_layout()
    return figure


def reliability_diagram(reliability: pd.DataFrame) -> bytes:
    """Accuracy against mean confidence per bin, before and after the temperature (a
    calibrated model's points lie on the diagonal; a point's area grows with its images),
    over the number of images per bin. `reliability` is evaluate's calibration.csv (columns
    probabilities, lower, upper, images, accuracy, confidence)."""
    figure, (axes, counts) = plt.subplots(2, 1, figsize=(6, 7), height_ratios=(3, 1), sharex=True)
    axes.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    groups = list(reliability.groupby("probabilities", sort=False))  # uncalibrated, calibrated
    width = float((reliability["upper"] - reliability["lower"]).iloc[0]) / (len(groups) + 1)
    for number, ((name, table), marker) in enumerate(zip(groups, "os", strict=True)):
        filled = table[table["images"] > 0]
        sizes = 12 + 60 * np.sqrt(filled["images"] / filled["images"].max())
        line = axes.plot(filled["confidence"], filled["accuracy"], "-", alpha=0.6)[0]
        axes.scatter(
            filled["confidence"],
            filled["accuracy"],
            s=sizes,
            marker=marker,
            label=name,
            color=line.get_color(),
        )
        counts.bar(table["lower"] + (number + 0.5) * width, table["images"], width, label=name)
    axes.set(
        title="Reliability (test set, 15 bins)",
        ylabel="accuracy in bin",
        xlim=(0, 1.01),
        ylim=(0, 1.01),
    )
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)
    counts.set(xlabel="confidence", ylabel="images", yscale="log")
    counts.grid(alpha=0.3)
    figure.tight_layout()
    return to_png(figure)


def training_curves(history: pd.DataFrame) -> bytes:
    """Loss and accuracy per epoch, train against validation."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "--s")):
        loss_axes.plot(history["epoch"], history[f"{split}_loss"], style, label=split)
        accuracy_axes.plot(history["epoch"], history[f"{split}_accuracy"], style, label=split)
    loss_axes.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    accuracy_axes.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return to_png(figure)


MOSAIC_DPI = 28  # mosaic pixels per inch of a digit grid: a digit is 1 in, 3.6x its 28 px


def digit_grid(images: np.ndarray, captions: list[str], title: str, columns: int = 8) -> bytes:
    """(N, 28, 28) uint8 images in a grid, each with its caption above it: one mosaic in one
    axes (a subplot per digit took 1.3 s a grid, mostly in tight_layout's tick machinery)."""
    rows = max(1, -(-len(images) // columns))
    side, gap, band = images.shape[-1], 4, 14  # px in the mosaic: digit, margin, caption band
    cell_width, cell_height = side + 2 * gap, side + gap + band
    mosaic = np.zeros((rows * cell_height, columns * cell_width), dtype=np.uint8)
    grid_height = rows * cell_height / MOSAIC_DPI  # inches: square pixels, 0.4 in for the title
    figure = plt.figure(figsize=(columns * cell_width / MOSAIC_DPI, grid_height + 0.4))
    axes = figure.add_axes((0.0, 0.0, 1.0, grid_height / (grid_height + 0.4)))
    for index, (image, caption) in enumerate(zip(images, captions, strict=True)):
        top, left = index // columns * cell_height + band, index % columns * cell_width + gap
        mosaic[top : top + side, left : left + side] = image
        axes.text(left + side / 2, top - 2, caption, ha="center", va="bottom", fontsize=8)
    axes.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, aspect="auto")
    axes.axis("off")
    figure.suptitle(title, y=1 - 0.15 / (grid_height + 0.4))
    return to_png(figure)


def photo_examples(examples: list[tuple[np.ndarray, np.ndarray | None, str]]) -> bytes:
    """Rows of (photo as (H, W, 3) uint8 RGB, the (28, 28) uint8 image the model saw or None
    when the preprocessing refused it, caption), two to a line: each photo beside its input."""
    rows = max(1, -(-len(examples) // 2))
    figure, axes_grid = plt.subplots(rows, 4, figsize=(8, rows * 1.7))
    for index, axes in enumerate(np.atleast_2d(axes_grid).reshape(-1, 2)):
        for each in axes:
            each.axis("off")
        if index >= len(examples):
            continue
        photo, seen, caption = examples[index]
        axes[0].imshow(photo)
        axes[0].set_title(caption, fontsize=8)
        if seen is not None:
            axes[1].imshow(seen, cmap="gray_r", vmin=0, vmax=255)
            axes[1].set_title("what the model saw", fontsize=8)
    figure.suptitle("Photographed test digits: the photo, and the model's input")
    figure.tight_layout()
    return to_png(figure)


def class_distribution(counts: pd.DataFrame) -> bytes:
    """Images per class in each split, as grouped bars."""
    splits = [column for column in counts.columns if column != "name"]
    figure, axes = plt.subplots(figsize=(9, 4))
    positions = np.arange(len(counts))
    width = 0.8 / len(splits)
    for number, split in enumerate(splits):
        axes.bar(positions + number * width, counts[split], width, label=split)
    axes.set_xticks(positions + width * (len(splits) - 1) / 2, counts["name"])
    axes.set(title="Class distribution per split", xlabel="class", ylabel="images")
    axes.legend()
    figure.tight_layout()
    return to_png(figure)


def ood_histograms(test_scores: np.ndarray, ood: pd.DataFrame, threshold: float) -> bytes:
    """The OOD score of the test digits against each kind of evaluate's OOD table (columns
    kind, ood_score; pages the preprocessing refused have no score and are left out), one
    panel per kind, with the threshold above which inputs are flagged."""
    scored = ood.dropna(subset=["ood_score"])
    kinds = list(dict.fromkeys(scored["kind"]))
    figure, panels = plt.subplots(1, max(1, len(kinds)), figsize=(3 * max(1, len(kinds)), 3))
    every = np.concatenate([test_scores, scored["ood_score"].to_numpy()])
    bins = np.linspace(every.min(), every.max(), 40)
    for axes, kind in zip(np.atleast_1d(panels), kinds, strict=False):
        scores = scored.loc[scored["kind"] == kind, "ood_score"]
        axes.hist(test_scores, bins, density=True, alpha=0.6, label="test digits")
        axes.hist(scores, bins, density=True, alpha=0.6, label=kind)
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
        axes.set(title=f"{kind} ({len(scores)} scored)", xlabel="OOD score", yticks=[])
        axes.legend(fontsize=7)
    figure.tight_layout()
    return to_png(figure)
