"""The predict command and the MNIST-style preprocessing of people's images."""

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mnistpipe.data.datasets import DATASETS
from mnistpipe.deploy.imaging import ImageError, centre_by_mass, load_grey, prepare, to_mnist
from mnistpipe.deploy.onnx_model import load_onnx
from mnistpipe.modeling.models import predict_logits
from tests.conftest import REPO
from tests.helpers import exported, metadata, tiny_model, uniform_images


def block_on_paper(alpha=False):
    """A dark 100x50 bar, off-centre on a 300x300 light page."""
    page = np.full((300, 300), 230, dtype=np.uint8)
    page[20:120, 200:250] = 10
    if not alpha:
        return Image.fromarray(page)
    rgba = np.zeros((300, 300, 4), dtype=np.uint8)  # transparent paper, opaque black ink
    rgba[20:120, 200:250] = (10, 10, 10, 255)
    return Image.fromarray(rgba, mode="RGBA")


def expected_bar():
    # 100x50 scales to 20x10; its centre of mass (9.5, 4.5) lands on the centre (13.5, 13.5).
    canvas = np.zeros((28, 28), dtype=np.uint8)
    canvas[4:24, 9:19] = 255
    return canvas


@pytest.mark.parametrize("alpha", [False, True])
def test_a_large_dark_off_centre_digit_becomes_centred_mnist(tmp_path, alpha):
    path = tmp_path / "bar.png"
    block_on_paper(alpha).save(path)
    np.testing.assert_array_equal(prepare(path), expected_bar())


def test_colour_jpeg_and_light_on_dark_photos_are_handled(tmp_path):
    page = np.zeros((300, 300, 3), dtype=np.uint8)  # light ink on a dark page, in colour
    page[20:120, 200:250] = (250, 240, 200)
    Image.fromarray(page).save(tmp_path / "photo.bmp")
    np.testing.assert_array_equal(prepare(tmp_path / "photo.bmp"), expected_bar())
    block_on_paper().convert("RGB").save(tmp_path / "scan.jpg", quality=95)
    result = prepare(tmp_path / "scan.jpg").astype(int)
    assert np.abs(result - expected_bar()).max() <= 40  # JPEG ringing, nothing more


def test_centre_by_mass_puts_the_mass_at_the_centre():
    digit = np.zeros((10, 12), dtype=np.float32)
    digit[0:3, 1:11] = 1.0  # a bar at the top: the mass sits high in the box
    canvas = centre_by_mass(digit)
    rows, cols = np.indices(canvas.shape)
    assert (rows * canvas).sum() / canvas.sum() == pytest.approx(13.5, abs=0.5)
    assert (cols * canvas).sum() / canvas.sum() == pytest.approx(13.5, abs=0.5)
    assert canvas.sum() == digit.sum()


def test_an_image_already_in_mnist_format_is_kept_as_it_is():
    image = np.zeros((28, 28), dtype=np.float32)
    image[5:20, 12:15] = 200
    np.testing.assert_array_equal(to_mnist(image), image.astype(np.uint8))


def test_a_blank_page_has_no_ink(tmp_path):
    Image.new("L", (100, 80), 240).save(tmp_path / "blank.png")
    with pytest.raises(ImageError, match=r"blank.png: no ink found"):
        prepare(tmp_path / "blank.png")


def test_unreadable_files_are_named_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    good = tmp_path / "cut.png"
    block_on_paper().save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:200])
    cases = [
        ("empty.png", "not an image file"),
        ("text.png", "not an image file"),
        ("truncated.png", "unreadable image"),
        ("absent.png", "no such file"),
    ]
    for name, message in cases:
        with pytest.raises(ImageError, match=f"{name}: {message}"):
            load_grey(tmp_path / name)


@pytest.mark.parametrize("side", [7_000, 10_000])  # over our limit; over PIL's own too
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")  # 49 or 100 Mpx in a few KB
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(ImageError, match=r"bomb.png: refused as a decompression bomb"):
        load_grey(tmp_path / "bomb.png")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return exported(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def linear_model_file(tmp_path_factory):
    """A linear classifier that keeps the ONNX contract, built without torch: for the
    command's behaviour, in the fast lane (a real export takes seconds)."""
    path = tmp_path_factory.mktemp("linear") / "model.onnx"
    path.write_bytes(tiny_model())
    return path


@pytest.fixture(scope="module")
def fashion_model_file(tmp_path_factory):
    return exported(tmp_path_factory.mktemp("fashion"), "fashion-mnist")


def predict(*args):
    command = [sys.executable, "-m", "apps.predict", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_predict_round_trips_mnist_images_saved_as_png(tmp_path, model_file):
    """ONNX Runtime through the predict command gives PyTorch's classes and calibrated
    probabilities (softmax of logits / temperature) for MNIST images saved as PNG."""
    model_path, checkpoint = model_file
    rng = np.random.default_rng(0)
    images = np.zeros((40, 28, 28), dtype=np.uint8)
    images[:, 4:24, 4:24] = rng.integers(0, 256, (40, 20, 20), dtype=np.uint8)
    folder = tmp_path / "pngs" / "nested"
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    logits = predict_logits(checkpoint.build(), torch.from_numpy(images), 1000)
    result = predict(tmp_path / "pngs", "--model", model_path, "--format", "csv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "path,label,confidence,ood_score,flagged"
    labels = [int(line.split(",")[1]) for line in lines[1:]]
    assert labels == logits.argmax(1).tolist()
    scores = [float(line.split(",")[3]) for line in lines[1:]]
    np.testing.assert_allclose(scores, -logits.max(1).values.numpy(), atol=1e-3)
    assert {line.split(",")[4] for line in lines[1:]} == {"False"}  # its threshold is +inf
    confidences = [float(line.split(",")[2]) for line in lines[1:]]
    calibrated = torch.softmax(logits / checkpoint.temperature, 1).max(1).values
    np.testing.assert_allclose(confidences, calibrated, atol=1e-4)
    uncalibrated = torch.softmax(logits, 1).max(1).values
    assert np.abs(np.array(confidences) - uncalibrated.numpy()).max() > 1e-3  # T applied


def test_predict_never_imports_torch(tmp_path, linear_model_file):
    """The predict command's whole process runs with torch made unimportable."""
    model_path = linear_model_file
    block_on_paper().save(tmp_path / "a.png")
    blocker = (
        "import sys, runpy\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch imported by the predict command: ' + name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        f"sys.argv = ['predict', {str(tmp_path / 'a.png')!r}, '--model', {str(model_path)!r}]\n"
        "try:\n"
        "    runpy.run_module('apps.predict', run_name='__main__')\n"
        "finally:\n"
        "    assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch loaded'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith(str(tmp_path / "a.png"))


def test_predict_json_and_table_formats(tmp_path, linear_model_file):
    model_path = linear_model_file
    block_on_paper().save(tmp_path / "a.png")
    block_on_paper(alpha=True).save(tmp_path / "b.gif")
    result = predict(
        tmp_path / "a.png", tmp_path / "b.gif", "--model", model_path, "--format", "json"
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["path"] for record in records] == [
        str(tmp_path / "a.png"),
        str(tmp_path / "b.gif"),
    ]
    for record in records:
        assert set(record["probabilities"]) == set("0123456789")
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert record["confidence"] == max(record["probabilities"].values())
    table = predict(tmp_path / "a.png", "--model", model_path).stdout.splitlines()
    assert table[0].split() == ["path", "label", "confidence", "ood_score"] and len(table) == 2


@pytest.mark.slow  # a real export (torch.onnx, seconds)
def test_predict_names_the_classes_of_a_fashion_mnist_model(tmp_path, fashion_model_file):
    model_path, checkpoint = fashion_model_file
    block_on_paper().save(tmp_path / "a.png")
    image = prepare(tmp_path / "a.png")[None]
    expected = checkpoint.classes[
        int(predict_logits(checkpoint.build(), torch.from_numpy(image), 1).argmax())
    ]
    result = predict(tmp_path / "a.png", "--model", model_path, "--format", "json")
    record = json.loads(result.stdout)
    assert record["label"] == expected
    assert list(record["probabilities"]) == list(DATASETS["fashion-mnist"].classes)
    table = predict(tmp_path / "a.png", "--model", model_path).stdout.splitlines()
    confidence = f"{record['confidence']:.4f}"
    score = f"{record['ood_score']:.3f}"
    assert table[1].split() == [str(tmp_path / "a.png"), *expected.split(), confidence, score]


def test_bad_files_get_an_error_line_and_the_rest_are_predicted(tmp_path, linear_model_file):
    model_path = linear_model_file
    block_on_paper().save(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.tif").write_text("hello")
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")
    result = predict(tmp_path, "--model", model_path, "--format", "csv")
    assert result.returncode == 1
    assert result.stdout.splitlines()[1].startswith(str(tmp_path / "good.png"))
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 5 and errors[-1] == "predict: 4 of 5 files failed"
    for name in ("empty.png", "notes.tif", "blank.png", "bomb.png"):
        assert any(line.startswith(f"predict: error: {tmp_path / name}: ") for line in errors)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "damage, message",
    [
        (None, "model not found; run the export stage"),
        (lambda data: b"not a model at all", "not a readable ONNX model"),
        (lambda data: data[: len(data) // 2], "not a readable ONNX model"),
    ],
)
def test_a_missing_or_damaged_model_is_one_clear_line(
    tmp_path, linear_model_file, damage, message
):
    block_on_paper().save(tmp_path / "a.png")
    path = tmp_path / "model.onnx"
    if damage is not None:
        path.write_bytes(damage(linear_model_file.read_bytes()))
    result = predict(tmp_path / "a.png", "--model", path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"predict: error: {path}: {message}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_uniform_images_of_every_shade_and_mode_are_refused(tmp_path, linear_model_file):
    names = []
    for name, image in uniform_images():
        image.save(tmp_path / name)
        names.append(name)
    # An animated GIF whose first frame is black, whatever follows.
    frames = [Image.new("L", (28, 28), 0), Image.new("L", (28, 28), 255)]
    frames[1].paste(0, (5, 5, 20, 20))
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    names.append("animated.gif")
    result = predict(tmp_path, "--model", linear_model_file)
    assert result.returncode == 1 and result.stdout == ""
    errors = result.stderr.strip().splitlines()
    assert errors[-1] == f"predict: {len(names)} of {len(names)} files failed"
    for name in names:
        (line,) = [
            line for line in errors if line.startswith(f"predict: error: {tmp_path / name}:")
        ]
        assert line.endswith("no ink found (the image is blank or has too little contrast)")


@pytest.mark.parametrize(
    ("size", "dot"),
    [((28, 28), (13, 13, 15, 15)), ((300, 400), (100, 100, 130, 125)), ((64, 48), (0, 0, 4, 4))],
    ids=["28x28-mnist-style", "page", "corner"],
)
@pytest.mark.parametrize("polarity", ["light-on-dark", "dark-on-light"])
def test_a_dot_or_a_speck_is_refused_as_too_little_ink(
    tmp_path, linear_model_file, size, dot, polarity
):
    paper, ink = (0, 255) if polarity == "light-on-dark" else (255, 0)
    image = Image.new("L", size[::-1], paper)
    image.paste(ink, dot)
    image.save(tmp_path / "dot.png")
    result = predict(tmp_path / "dot.png", "--model", linear_model_file)
    assert result.returncode == 1
    line = result.stderr.splitlines()[0]
    assert line.startswith(f"predict: error: {tmp_path / 'dot.png'}: too little ink for a digit")
    assert "a dot or a speck" in line


def test_a_digit_sized_mark_is_not_a_speck():
    """The span rule's edge: ink across a fifth of the shorter side passes, less does not."""
    image = np.zeros((28, 28), np.float32)
    image[10:16, 12] = 255  # 6 px: 0.2 * 28 = 5.6
    assert to_mnist(image).max() == 255
    image[10, 12] = 0  # 5 px
    with pytest.raises(ImageError, match="spans 5 px"):
        to_mnist(image)


def flagging_model(tmp_path, pages):
    """The linear contract model, its threshold between the OOD scores of `pages` (prepared
    as the command does), so that the first is answered and the second flagged."""
    from mnistpipe.deploy.onnx_model import LOGITS, load_onnx
    from mnistpipe.modeling.ood import score

    plain = load_onnx("linear.onnx", data=tiny_model())
    (logits,) = plain.run(np.stack([prepare(page) for page in pages]), (LOGITS,))
    first, second = score(logits)
    assert first < second, (first, second)  # else pick other pages
    path = tmp_path / "flagging.onnx"
    path.write_bytes(tiny_model(props=metadata(ood_threshold=(first + second) / 2).to_props()))
    return path, logits


def test_predict_says_unknown_above_the_threshold_and_guesses_on_request(tmp_path):
    block_on_paper().save(tmp_path / "a.png")
    cross = np.zeros((28, 28), dtype=np.uint8)  # no digit, but ink: answered or flagged
    cross[4:24, 12:16] = cross[12:16, 4:24] = 180
    Image.fromarray(cross).save(tmp_path / "b.png")
    pages = [tmp_path / "a.png", tmp_path / "b.png"]
    model, logits = flagging_model(tmp_path, pages)
    guess = str(int(logits[1].argmax()))

    rows = list(
        csv.reader(predict(*pages, "--model", model, "--format", "csv").stdout.splitlines())
    )
    assert [row[1] for row in rows[1:]] == [str(int(logits[0].argmax())), ""]
    assert [row[4] for row in rows[1:]] == ["False", "True"]
    records = [
        json.loads(line)
        for line in predict(*pages, "--model", model, "--format", "json").stdout.splitlines()
    ]
    assert [r["label"] for r in records] == [str(int(logits[0].argmax())), None]
    assert [r["flagged"] for r in records] == [False, True]
    assert records[1]["probabilities"][guess] == records[1]["confidence"]

    result = predict(*pages, "--model", model)
    assert result.returncode == 0
    row = result.stdout.splitlines()[2].split()
    assert row[:3] == [str(pages[1]), "unknown", "-"]
    assert result.stderr.strip() == (
        f"predict: 1 of 2 images do not look like a digit (OOD score above"
        f" {load_onnx(model).metadata.ood_threshold:g});"
        " --guess shows the best guess anyway"
    )
    guessed = predict(*pages, "--model", model, "--guess")
    assert guessed.stdout.splitlines()[2].split()[:3] == [str(pages[1]), "unknown", f"({guess}?)"]
    assert guessed.stderr.strip() == (
        f"predict: 1 of 2 images do not look like a digit (OOD score above"
        f" {load_onnx(model).metadata.ood_threshold:g})"
    )
    records = [
        json.loads(line)
        for line in predict(
            *pages, "--model", model, "--format", "json", "--guess"
        ).stdout.splitlines()
    ]
    assert records[1]["label"] == guess and records[1]["flagged"] is True


@pytest.mark.parametrize("app", ["apps.predict", "apps.serve"])
def test_help_gives_every_flag_its_meaning_and_default(app):
    shown = subprocess.run(
        [sys.executable, "-m", app, "--help"], cwd=REPO, capture_output=True, text=True
    ).stdout
    entries = re.split(r"\n  (?=-)", shown.split("\noptions:")[1])[1:]  # one per flag
    flags = [entry.split()[0] for entry in entries]
    assert "--model" in flags and len(flags) >= 4, shown
    for entry in entries:
        words = " ".join(entry.split())
        if not words.startswith("-h"):
            assert "(default: " in words and len(words) > 40, entry
