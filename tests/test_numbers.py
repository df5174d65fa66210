"""Reading a row of digits (deploy/numbers.py, predict --number): segmentation checked against
the digits drawn one by one, the joins and cuts, and the command's answers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnistpipe.deploy.imaging import NoInkError, load_grey, to_mnist
from mnistpipe.deploy.numbers import MAX_DIGITS, digits_of_row, number_text
from tests.conftest import REPO
from tests.helpers import tiny_model

SAMPLES = {1: "one", 2: "two", 7: "seven"}  # the drawn digits of samples/
DIGIT_PAGES = {label: REPO / "samples" / f"{name}.png" for label, name in SAMPLES.items()}


def row_page(labels: list[int], gap: int = 20) -> tuple[np.ndarray, list[int]]:
    """The samples' drawn digits side by side on one light page (grey levels), and where
    each digit's page starts (px from the left)."""
    pages = [load_grey(DIGIT_PAGES[label]) for label in labels]
    width = sum(page.shape[1] for page in pages) + gap * (len(pages) + 1)
    row = np.full((pages[0].shape[0] + 2 * gap, width), 235.0, dtype=np.float32)
    starts, left = [], gap
    for page in pages:
        row[gap : gap + page.shape[0], left : left + page.shape[1]] = page
        starts.append(left)
        left += page.shape[1] + gap
    return row, starts


def test_a_row_reads_as_its_digits_each_as_if_alone_on_a_page():
    labels = [2, 7, 1, 1, 7]
    row, starts = row_page(labels)
    digits = digits_of_row(row)
    assert len(digits) == len(labels)
    for digit, label, start in zip(digits, labels, starts, strict=True):
        alone = to_mnist(load_grey(DIGIT_PAGES[label])).astype(np.float64)
        overlap = np.corrcoef(digit.image.astype(np.float64).ravel(), alone.ravel())[0, 1]
        assert overlap > 0.95, (label, overlap)
        left, top, right, bottom = digit.box
        assert start <= left < right <= start + 112 and 0 <= top < bottom <= row.shape[0]


def test_a_digit_in_pieces_is_one_digit_and_specks_are_dropped():
    page = Image.new("L", (400, 200), 235)
    draw = ImageDraw.Draw(page)
    draw.line([(60, 40), (60, 160)], fill=20, width=9)  # a 1
    draw.line([(150, 40), (220, 40)], fill=20, width=9)  # a 5's cap, apart from ...
    draw.line([(150, 60), (150, 100), (210, 110), (215, 150), (150, 160)], fill=20, width=9)
    draw.ellipse((300, 150, 304, 154), fill=20)  # a speck
    digits = digits_of_row(np.asarray(page, dtype=np.float32))
    assert [digit.box[0] < 100 for digit in digits] == [True, False]  # the 1, then the 5


def test_touching_digits_are_cut_apart():
    page = Image.new("L", (400, 200), 235)
    draw = ImageDraw.Draw(page)
    for left in (100, 170, 240):  # three 0s, each 80 px wide, touching their neighbours
        draw.ellipse((left, 40, left + 80, 160), outline=20, width=9)
    digits = digits_of_row(np.asarray(page, dtype=np.float32))
    assert len(digits) == 3
    assert [d.box[0] for d in digits] == sorted(d.box[0] for d in digits)


def test_a_blank_page_a_dot_and_a_long_scrawl_are_refused():
    with pytest.raises(NoInkError, match="no ink found"):
        digits_of_row(np.full((100, 300), 230.0, dtype=np.float32))
    with pytest.raises(NoInkError, match="too little ink for a number: its tallest mark is 4"):
        digits_of_row(load_grey(REPO / "samples" / "dot.png"))
    page = Image.new("L", (60 * (MAX_DIGITS + 2), 100), 235)
    for index in range(MAX_DIGITS + 1):
        x = 30 + 60 * index
        ImageDraw.Draw(page).line([(x, 20), (x, 80)], fill=20, width=6)
    with pytest.raises(NoInkError, match=f"more than the {MAX_DIGITS}"):
        digits_of_row(np.asarray(page, dtype=np.float32))


def test_a_number_is_a_string_that_keeps_its_zeros_and_marks_the_unknown():
    assert number_text(["0", "0", "7"]) == "007"
    assert number_text(["2", None, "2", "6"]) == "2?26"


def predict(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "apps.predict", "--number", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_predict_number_prints_one_number_per_file_in_each_format(tmp_path):
    """With a linear model that keeps the ONNX contract (built without torch): the shape of
    the answers, whatever the model says."""
    (tmp_path / "model.onnx").write_bytes(tiny_model())
    model = ["--model", str(tmp_path / "model.onnx")]
    row, _ = row_page([7, 1, 2])
    Image.fromarray(row.astype(np.uint8)).save(tmp_path / "row.png")
    Image.new("L", (200, 100), 230).save(tmp_path / "blank.png")
    files = [str(tmp_path / "blank.png"), str(tmp_path / "row.png")]
    result = predict(*model, "--format", "json", "--guess", *files)
    assert result.returncode == 1  # the blank page failed
    assert result.stderr.startswith(f"predict: error: {files[0]}: no ink found")
    (record,) = map(json.loads, result.stdout.splitlines())
    assert record["path"] == files[1] and len(record["digits"]) == 3
    assert record["number"] == "".join(digit["label"] for digit in record["digits"])
    lefts = [digit["box"][0] for digit in record["digits"]]
    assert lefts == sorted(lefts)
    assert record["unknown"] == [i for i, d in enumerate(record["digits"]) if d["flagged"]]
    plain = "".join("?" if d["flagged"] else d["label"] for d in record["digits"])
    assert predict(*model, files[1]).stdout.splitlines()[1].split() == [files[1], plain]
    rows = list(csv.reader(predict(*model, "--format", "csv", files[1]).stdout.splitlines()))
    unknown = " ".join(map(str, record["unknown"]))
    assert rows == [["path", "number", "unknown"], [files[1], plain, unknown]]
