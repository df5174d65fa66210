"""The predict command and the MNIST-style preprocessing of people's images."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mnistpipe.checkpoints import Checkpoint, save_checkpoint
from mnistpipe.imaging import ImageError, centre_by_mass, load_grey, prepare, to_mnist
from mnistpipe.models import build_model, predict_logits
from tests.conftest import RECIPE, REPO, SMALL_CNN


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


@pytest.fixture
def checkpoint_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn", SMALL_CNN, mean=0.13, std=0.31)
    checkpoint = Checkpoint(
        "cnn", SMALL_CNN, RECIPE, model.state_dict(), "mnist", tuple("0123456789"), 1, 0.5
    )
    path = tmp_path / "model.pt"
    save_checkpoint(path, checkpoint)
    return path, checkpoint


def predict(*args):
    command = [sys.executable, "-m", "apps.predict", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


def test_predict_round_trips_mnist_images_saved_as_png(tmp_path, checkpoint_file):
    model_path, checkpoint = checkpoint_file
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
    assert lines[0] == "path,digit,confidence"
    digits = [int(line.split(",")[1]) for line in lines[1:]]
    assert digits == logits.argmax(1).tolist()
    confidences = [float(line.split(",")[2]) for line in lines[1:]]
    np.testing.assert_allclose(confidences, torch.softmax(logits, 1).max(1).values, atol=1e-4)


def test_predict_json_and_table_formats(tmp_path, checkpoint_file):
    model_path, _ = checkpoint_file
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
    assert table[0].split() == ["path", "digit", "confidence"] and len(table) == 2


def test_bad_files_get_an_error_line_and_the_rest_are_predicted(tmp_path, checkpoint_file):
    model_path, _ = checkpoint_file
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


def test_predict_without_a_model_is_one_clear_line(tmp_path):
    block_on_paper().save(tmp_path / "a.png")
    result = predict(tmp_path / "a.png", "--model", tmp_path / "none.pt")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"predict: error: {tmp_path / 'none.pt'}: checkpoint not found; run the train stage"
    )
