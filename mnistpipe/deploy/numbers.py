"""A written number read as a row of digits: a house number, a year on paper.

The ink (`imaging.ink_level`) is split into digits by connected components: pieces that lie
one above the other (a 5's cap, a broken stroke) join into one digit, specks and marks far
smaller than the digits are dropped, and a piece too wide for one digit (touching digits) is
cut where the ink is thinnest. Each digit becomes its own MNIST-style image, so the model
classifies, and flags, each on its own. The predict command (`--number`), the API and the
evaluate stage use it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistpipe.deploy import ink
from mnistpipe.deploy.imaging import (
    MIN_INK_SPAN,
    MIN_PIECE,
    ImageError,
    NoInkError,
    digit_image,
    ink_level,
    load_grey,
    with_name,
)

if TYPE_CHECKING:  # evaluate reads numbers too, without ONNX Runtime
    from mnistpipe.deploy.onnx_model import Answers

MAX_DIGITS = 12  # a longer row is refused: not a number anybody writes on one line
MIN_HEIGHT = 0.4  # a digit is at least this share of the row's tallest (a 1 is as tall)
JOIN_OVERLAP = 0.5  # pieces overlapping this share of the narrower one's width are one digit
PART_HEIGHT = 0.7  # a piece shorter than this share of the tallest is part of a digit...
JOIN_GAP = 0.1  # ... when it lies within this share of the tallest of its neighbour
DIGIT_ASPECT = 0.65  # a digit's width over its height, on average: where touching ones are cut
SPLIT_ASPECT = 1.6  # a piece wider than this times its height holds more than one digit


@dataclass(frozen=True)
class Digit:
    """One digit of a number: its MNIST-style image and its box in the image read."""

    image: np.ndarray  # (28, 28) uint8, light on black
    box: tuple[int, int, int, int]  # left, top, right, bottom in px (the last two exclusive)


def digits_of_row(grey: np.ndarray) -> list[Digit]:
    """The digits of a row of digits on a page (H, W grey levels), left to right. Refuses
    (`NoInkError`) a page with no ink, marks too small for digits (as `to_mnist` does), or
    more than MAX_DIGITS digits."""
    level, mask = ink_level(grey)
    found = ink.components(mask)
    if found.count == 0:
        raise NoInkError("no ink found (only noise stands out of the paper)")
    areas, boxes = found.areas, found.boxes
    pieces = [index for index in range(found.count) if areas[index] >= MIN_PIECE * areas.max()]
    groups = joined(pieces, boxes)
    tallest = max(bottom - top for top, _, bottom, _ in (span(boxes, g) for g in groups))
    if tallest < MIN_INK_SPAN * min(grey.shape):  # as for one digit: a dot, a speck
        raise NoInkError(
            f"too little ink for a number: its tallest mark is {tallest} px, under"
            f" {MIN_INK_SPAN:.0%} of the image's shorter side ({min(grey.shape)} px)"
        )
    digits = []
    for group in sorted(groups, key=lambda g: span(boxes, g)[1]):
        top, left, bottom, right = span(boxes, group)
        if bottom - top < MIN_HEIGHT * tallest:
            continue  # a dot, a comma, a dash: not a digit
        strokes = found.mask(np.array(group))
        for cut_left, cut_right in cuts(strokes[top:bottom, left:right]):
            part = np.zeros_like(strokes)
            part[top:bottom, left + cut_left : left + cut_right] = strokes[
                top:bottom, left + cut_left : left + cut_right
            ]
            rows, cols = np.nonzero(part)
            box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
            digits.append(Digit(digit_image(level, part), box))
    if len(digits) > MAX_DIGITS:
        raise NoInkError(f"{len(digits)} marks in a row: more than the {MAX_DIGITS} of a number")
    return digits


def row_of_file(path: str | Path) -> list[Digit]:
    """`digits_of_row` of an image file; errors name the file."""
    return with_name(str(path), lambda: digits_of_row(load_grey(path)))


def row_of_bytes(data: bytes, name: str) -> list[Digit]:
    """`digits_of_row` of an uploaded file's bytes; errors say `name`."""
    if not data:
        raise ImageError(f"{name}: empty file")
    return with_name(name, lambda: digits_of_row(load_grey(io.BytesIO(data), name)))


def number_answer(
    digits: list[Digit], answers: Answers, classes: tuple[str, ...], guess: bool
) -> dict[str, Any]:
    """What the predict command (JSON) and the API answer for a number: `number`, a string
    with "?" at each flagged position (its best guess instead when `guess`), `unknown`, the
    flagged positions (0-based), and per digit its `label` (null when flagged and not
    `guess`), `confidence`, `ood_score`, `flagged` and `box` [left, top, right, bottom]."""
    each = []
    for digit, answer in zip(digits, answers, strict=True):
        label = classes[answer.best] if guess or not answer.flagged else None
        each.append(
            {
                "label": label,
                "confidence": round(float(answer.probabilities[answer.best]), 6),
                "ood_score": round(answer.score, 4),
                "flagged": answer.flagged,
                "box": list(digit.box),
            }
        )
    return {
        "number": number_text([digit["label"] for digit in each]),
        "unknown": [index for index, digit in enumerate(each) if digit["flagged"]],
        "digits": each,
    }


def span(boxes: np.ndarray, group: list[int]) -> tuple[int, int, int, int]:
    """The box (top, left, bottom, right) around the components of `group`."""
    chosen = boxes[group]
    top, left = chosen[:, 0].min(), chosen[:, 1].min()
    return int(top), int(left), int(chosen[:, 2].max()), int(chosen[:, 3].max())


def joined(pieces: list[int], boxes: np.ndarray) -> list[list[int]]:
    """`pieces` (component indexes) grouped into digits, left to right: a piece joins the
    group before it when their columns overlap by JOIN_OVERLAP of the narrower one, or when
    one of them is too short to be a whole digit (under PART_HEIGHT of the tallest piece: a
    4's open half, a 5's cap) and the gap between them is under JOIN_GAP of that height."""
    tallest = max(int(boxes[piece][2] - boxes[piece][0]) for piece in pieces)
    groups: list[list[int]] = []
    for piece in sorted(pieces, key=lambda index: (boxes[index][1], boxes[index][0])):
        top, left, bottom, right = boxes[piece]
        if groups:
            group_top, group_left, group_bottom, group_right = span(boxes, groups[-1])
            overlap = min(right, group_right) - max(left, group_left)
            short = min(bottom - top, group_bottom - group_top) < PART_HEIGHT * tallest
            if overlap >= JOIN_OVERLAP * min(right - left, group_right - group_left) or (
                short and -overlap < JOIN_GAP * tallest
            ):
                groups[-1].append(piece)
                continue
        groups.append([piece])
    return groups


def cuts(strokes: np.ndarray) -> list[tuple[int, int]]:
    """Column ranges of the digits in one piece of ink (H, W bool): the whole width, or for a
    piece too wide for one digit, as many digits as its width holds, cut at the column of
    least ink near each even share."""
    height, width = strokes.shape
    if width <= SPLIT_ASPECT * height:
        return [(0, width)]
    count = max(2, round(width / (DIGIT_ASPECT * height)))
    ink_per_column = strokes.sum(axis=0)
    edges = [0]
    for index in range(1, count):
        guess = round(index * width / count)
        near = max(1, width // (3 * count))  # search a third of a digit either side
        low, high = max(edges[-1] + 1, guess - near), min(width - 1, guess + near)
        edges.append(low + int(np.argmin(ink_per_column[low : high + 1])))
    edges.append(width)
    return list(pairwise(edges))


def number_text(labels: list[str | None]) -> str:
    """The number as written: each position's class, "?" where the model flagged it ("007"
    keeps its zeros: a number here is a string)."""
    return "".join(label if label is not None else "?" for label in labels)
