"""Write samples/: a few images to try the predict command and the page on.

    python -m tools.make_samples [--out samples]

Drawn digits (dark ink on a light page, as on paper), a drawn number (2026), a photographed
digit (JPEG), a printed letter, a page of noise, a dot and a black page: README's and
docs/apps.md's predict examples run on them. Everything is drawn from fixed strokes and one
seed, so the files are the same bytes on every run (a test checks the committed ones).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mnistpipe.files import write_bytes_atomic
from mnistpipe.modeling.photos import CONDITIONS, photograph
from mnistpipe.modeling.synthetic import FONT_DIR

PAGE = 112  # px, square
PAPER, INK = 235, 25  # grey levels
STROKE = 9  # px
# digit -> its strokes, each a polyline of (x, y) in px on the page
DIGITS = {
    "one": [[(48, 30), (60, 20), (60, 92)]],
    "two": [[(34, 38), (44, 24), (62, 20), (78, 30), (78, 48), (36, 90), (82, 90)]],
    "seven": [[(30, 24), (84, 24), (52, 94)]],
}
# More strokes, for the number: a 0 and a 6 in the same hand
NUMBER_STROKES = DIGITS | {
    "zero": [
        [(56, 20), (36, 34), (30, 58), (36, 84), (56, 94), (76, 84), (82, 58), (76, 34), (56, 20)]
    ],
    "six": [
        [(74, 22), (50, 34), (36, 60), (38, 84), (56, 94), (74, 84), (76, 64), (58, 56), (40, 66)]
    ],
}
NUMBER = ("two", "zero", "two", "six")  # 2026, a year written on paper
SEED = 7  # the noise page and the photo


def png(page: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(page.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def drawn(strokes: list[list[tuple[int, int]]]) -> np.ndarray:
    image = Image.new("L", (PAGE, PAGE), PAPER)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        draw.line(stroke, fill=INK, width=STROKE, joint="curve")
    return np.asarray(image)


def letter(text: str) -> np.ndarray:
    image = Image.new("L", (PAGE, PAGE), PAPER)
    font = ImageFont.truetype(str(FONT_DIR / "DejaVuSans.ttf"), 80)
    ImageDraw.Draw(image).text((PAGE // 2, PAGE // 2), text, fill=INK, font=font, anchor="mm")
    return np.asarray(image)


def number_page() -> np.ndarray:
    """2026 drawn digit by digit, 80 px apart, on one wide page."""
    image = Image.new("L", (PAGE * len(NUMBER) * 3 // 4 + PAGE // 2, PAGE), PAPER)
    draw = ImageDraw.Draw(image)
    for index, name in enumerate(NUMBER):
        offset = PAGE // 4 + index * PAGE * 3 // 4 - 28
        for stroke in NUMBER_STROKES[name]:
            moved = [(x + offset, y) for x, y in stroke]
            draw.line(moved, fill=INK, width=STROKE, joint="curve")
    return np.asarray(image)


def photo() -> bytes:
    """The seven, drawn at 4x with a marker's width and photographed as evaluate photographs
    test digits: a shaded page, a little blur, sensor noise, JPEG (modeling/photos.py)."""
    mask = Image.new("L", (PAGE * 4, PAGE * 4), 0)
    for stroke in DIGITS["seven"]:
        ImageDraw.Draw(mask).line([(4 * x, 4 * y) for x, y in stroke], fill=255, width=4 * STROKE)
    rng = np.random.default_rng(SEED)
    data, _ = photograph(mask.crop(mask.getbbox()), (720, 960), CONDITIONS["shadow"], rng)
    return data


def samples() -> dict[str, bytes]:
    """File name -> file bytes: PNG, and a JPEG photo."""
    pages = {f"{name}.png": drawn(strokes) for name, strokes in DIGITS.items()}
    pages["letter-k.png"] = letter("K")
    pages["noise.png"] = np.random.default_rng(SEED).integers(0, 256, (PAGE, PAGE))
    dot = np.full((PAGE, PAGE), PAPER)
    dot[50:54, 60:64] = INK  # 4 px: a speck, under a fifth of the page
    pages["dot.png"] = dot
    pages["black.png"] = np.zeros((PAGE, PAGE))
    pages["number-2026.png"] = number_page()
    files = {name: png(page) for name, page in pages.items()}
    files["photo-seven.jpg"] = photo()
    return dict(sorted(files.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.make_samples", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("samples"), help="folder to write")
    args = parser.parse_args(argv)
    drawn = samples()
    for name, data in drawn.items():
        write_bytes_atomic(args.out / name, data)
    print(f"make_samples: wrote {len(drawn)} images to {args.out}")


if __name__ == "__main__":
    main()
