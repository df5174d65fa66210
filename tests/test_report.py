"""The report stage on a small run made by the real stages."""

import hashlib
import itertools
import json
import subprocess
import sys

import jinja2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from mnistpipe.data.datasets import DATASETS
from mnistpipe.data.processed import Split
from mnistpipe.deploy.imaging import FOREIGN_DIGITS, prepare
from mnistpipe.modeling.calibration import ECE_BINS
from mnistpipe.modeling.photos import photos
from mnistpipe.reporting import figures
from mnistpipe.reporting.markdown import TEMPLATES, render
from stages.report import confused_pairs, photo_figure
from tests.conftest import REPO
from tests.helpers import params_file

FIGURES = (
    "confusion_matrix.png",
    "training_curves.png",
    "misclassified.png",
    "samples.png",
    "class_distribution.png",
    "reliability.png",
    "ood_scores.png",
    "photos.png",
)


def test_confused_pairs_skip_the_diagonal_and_sort_by_count():
    confusion = pd.DataFrame(
        [[5, 2, 0], [3, 7, 3], [0, 1, 9]], index=list("abc"), columns=list("abc")
    )
    pairs = confused_pairs(confusion, 3)
    assert list(pairs.itertuples(index=False, name=None)) == [
        ("b", "a", 3),
        ("b", "c", 3),
        ("a", "b", 2),
    ]


def report(tmp_path, out, chain, params):
    metrics = tmp_path / "metrics"
    metrics.mkdir(exist_ok=True)
    names = {
        "metrics": "metrics.json",
        "confusion": "confusion_matrix.csv",
        "per-class": "per_class.csv",
        "misclassified": "misclassified.csv",
        "predictions": "predictions.csv",
        "calibration": "calibration.csv",
        "ood": "ood.csv",
        "photos": "photos.csv",
        "numbers": "numbers.csv",
    }
    for name, path in chain[1].items():
        if name in names:
            (metrics / names[name]).write_bytes(path.read_bytes())
    (metrics / "history.csv").write_bytes((chain[0] / "history.csv").read_bytes())
    (metrics / "class_counts.csv").write_bytes((chain[0] / "counts.csv").read_bytes())
    command = [
        sys.executable,
        "-m",
        "stages.report",
        "--metrics",
        metrics,
        "--data",
        chain[0] / "processed",
        "--model",
        chain[0] / "model.pt",
        "--onnx",
        chain[0] / "model.onnx",
        "--out",
        out,
        "--params",
        params,
    ]
    return subprocess.run(list(map(str, command)), cwd=REPO, capture_output=True, text=True)


@pytest.mark.slow
def test_report_has_every_figure_and_is_deterministic(tmp_path, stage_chain):
    *chain, params = stage_chain
    outputs = []
    for name in ("first", "second"):
        result = report(tmp_path, tmp_path / name, chain, params)
        assert result.returncode == 0, result.stderr
        outputs.append({path.name: path.read_bytes() for path in (tmp_path / name).iterdir()})
    assert outputs[0] == outputs[1]
    assert set(outputs[0]) == {"report.md", "model_card.md", *FIGURES}
    for figure in FIGURES:
        assert outputs[0][figure].startswith(b"\x89PNG\r\n\x1a\n")
    markdown = outputs[0]["report.md"].decode()
    for figure in FIGURES:
        assert f"]({figure})" in markdown
    for heading in (
        "## Test metrics",
        "## Per class",
        "## Most confused pairs",
        "## Calibration",
        "## Out of distribution",
        "## Photographed digits",
        "## Numbers",
        "## Params of the run",
        "Weakest classes by F1",
    ):
        assert heading in markdown
    assert "Images: 160 train, 40 validation, 50 test." in markdown
    card = outputs[0]["model_card.md"].decode()
    headings = [line for line in card.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Model details",
        "## Intended use",
        "## Out-of-scope uses",
        "## Training data",
        "## Metrics (test set)",
        "## Calibration",
        "## Foreign inputs",
        "## Inputs that are not digits",
        "## Limitations",
        "## How to reproduce",
    ]
    metrics = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert f"T = {metrics['temperature']}" in card
    assert f"{metrics['ece_uncalibrated']:.2%} before, {metrics['ece_calibrated']:.2%}" in card
    onnx_hash = hashlib.sha256((chain[0] / "model.onnx").read_bytes()).hexdigest()
    assert f"SHA-256 `{onnx_hash}`" in card
    assert f"above {metrics['ood_threshold']}" in card
    assert f"noise {metrics['ood_noise_rejected']:.1%}" in card
    ood = pd.read_csv(tmp_path / "metrics" / "ood.csv")
    assert set(ood["kind"]) == {"blank", "noise", "dots", "strokes", "letters", "foreign digits"}
    per_class = pd.read_csv(tmp_path / "metrics" / "per_class.csv", dtype={"class": str})
    assert per_class.to_markdown(index=False, floatfmt=".4f") in card  # the file's numbers


def test_report_params_are_validated(tmp_path, raw_dir):
    text = params_file(tmp_path, raw_dir).read_text()
    bad = text.replace("misclassified_shown: 16", "misclassified_shown: 0")
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    command = [
        sys.executable,
        "-m",
        "stages.report",
        "--metrics",
        "m",
        "--data",
        "d",
        "--model",
        "x.pt",
        "--onnx",
        "x.onnx",
        "--out",
        str(tmp_path / "r"),
        "--params",
        str(path),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1
    assert "report.misclassified_shown: must be between 1 and 100, got 0" in result.stderr


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_class_names_under_the_confusion_matrix_never_overlap(dataset, monkeypatch):
    classes = DATASETS[dataset].classes
    counts = np.diag(np.arange(100, 110)) + 1
    index = pd.Index(classes, name="actual")
    confusion = pd.DataFrame(counts, index=index, columns=pd.Index(classes, name="predicted"))
    assert names_overlap(figures.confusion_figure(confusion)) is False
    monkeypatch.setattr(figures, "LONG_LABEL", 100)  # never slanted: Fashion's names collide
    assert names_overlap(figures.confusion_figure(confusion)) is (dataset == "fashion-mnist")


def names_overlap(figure) -> bool:
    """Whether neighbouring x tick labels collide: upright ones when their boxes overlap,
    slanted (parallel) ones when the distance between their baselines is below the text
    height."""
    figure.canvas.draw()
    axes = figure.axes[0]
    labels = axes.get_xticklabels()
    try:
        if {label.get_rotation() for label in labels} == {0.0}:
            boxes = [label.get_window_extent() for label in labels]
            return any(left.x1 > right.x0 for left, right in itertools.pairwise(boxes))
        (angle,) = {np.radians(label.get_rotation()) for label in labels}
        ticks = axes.transData.transform([(tick, 0) for tick in axes.get_xticks()])[:, 0]
        height = max(label.get_fontsize() for label in labels) * figure.dpi / 72
        return bool(np.diff(ticks).min() * np.sin(angle) < height)
    finally:
        plt.close(figure)


def test_documents_come_from_templates_that_refuse_a_missing_number():
    """A value the template names but the code does not give is an error, not a blank."""
    with pytest.raises(jinja2.UndefinedError, match="'metrics_table' is undefined"):
        render("report.md.j2", {"dataset": "mnist", "sizes": {"train": 1, "val": 1, "test": 1}})
    # the prose restates no constant of the code: the ECE bins and the foreign set are filled in
    for template in TEMPLATES.glob("*.md.j2"):
        text = template.read_text(encoding="utf-8")
        assert f"{ECE_BINS} bins" not in text and f"{FOREIGN_DIGITS} foreign" not in text
        assert "{{ ece_bins }} bins" in text


@pytest.mark.parametrize("taken", [1, 3])
def test_the_photo_figure_shows_what_evaluate_photographed_however_few(taken):
    """evaluate.photos may be below the figure's two per condition (the tests' tiny run
    takes one): the figure draws what evaluate's table has, captioned from it."""
    digit = prepare(REPO / "samples" / "seven.png")
    test = Split(np.stack([digit] * 3), np.array([7, 7, 7], dtype=np.uint8))
    shot = photos(test.images, test.labels.astype(np.int64), taken, seed=1)
    scored = pd.DataFrame(
        {
            "condition": [p.condition for p in shot],
            "file": [p.name for p in shot],
            "outcome": "answered_right",
        }
    )
    image = photo_figure(scored, test, seed=1)
    assert image.startswith(b"\x89PNG\r\n\x1a\n")
