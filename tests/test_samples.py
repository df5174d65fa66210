"""samples/, the images README's predict example runs on: what tools/make_samples.py draws,
and answered by the predict command as the example says wherever the model cannot matter."""

import re
import subprocess
import sys

from tests.conftest import REPO
from tests.helpers import exported
from tools.make_samples import samples

SAMPLES = REPO / "samples"


def test_the_committed_samples_are_what_the_script_draws():
    committed = {path.name: path.read_bytes() for path in SAMPLES.iterdir()}
    assert committed == samples()


def test_the_examples_name_only_shipped_samples():
    for page in (REPO / "README.md", REPO / "docs" / "apps.md"):
        text = page.read_text(encoding="utf-8")
        assert "$ python -m apps.predict samples/" in text, page
        named = set(re.findall(r"samples/([\w-]+\.(?:png|jpg))", text))
        assert named and named <= {path.name for path in SAMPLES.iterdir()}, page


def test_predict_refuses_the_blank_and_the_dot_and_answers_the_rest(tmp_path):
    """The refusals come before the model, so any model gives them (here a small one)."""
    model, _ = exported(tmp_path)
    command = [sys.executable, "-m", "apps.predict", "samples/", "--model", str(model)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert errors == [
        "predict: error: samples/black.png: no ink found (the image is blank or has too little"
        " contrast)",
        "predict: error: samples/dot.png: too little ink for a digit: it spans 4 px, under 20%"
        " of the image's shorter side (112 px); a dot or a speck",
    ]
    answered = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    shown = ("letter-k.png", "noise.png", "number-2026.png", "one.png", "photo-seven.jpg")
    assert answered == [f"samples/{name}" for name in (*shown, "seven.png", "two.png")]
