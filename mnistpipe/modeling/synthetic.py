"""Images that are not digits, made from a seed: to train the model to say "none of these"
(outlier exposure) and to measure how often it does.

Each kind draws pages as a person might send them: grey levels 0-255 as `(H, W)` float32, of
many sizes, dark on light or light on dark. The predict command's preprocessing
(`imaging.to_mnist`) then refuses them or turns them into 28x28 inputs. Letters and glyphs are
drawn with the DejaVu fonts that matplotlib bundles, through Pillow's FreeType, so the pages
are the same bytes wherever the same wheels are installed.

Kinds for evaluation are `OOD_KINDS`. Training (`training_outliers`) draws other pages from
another seed, and never a Latin letter: the letters stay a held-out test of the idea.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mnistpipe.deploy.imaging import ImageError, to_mnist

Page = tuple[np.ndarray, str]  # (H, W) float32 grey levels 0-255, and what it shows
FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
LETTER_FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSerif", "DejaVuSansMono")
LETTERS = string.ascii_letters
# Printed non-digits for training: symbols and Greek letters unlike any Latin letter or digit
# (no O, I, l or 0 lookalikes, no bars or brackets that a 1 could be).
TRAINING_GLYPHS = "#%&@+=?*<>$§¶∞≈≠√∑∫♠♣♥♦★✓~ΓΔΛΞΠΦΨΩαβγεηλμξπφψω"
TRAINING_FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique")
SIZES = ((28, 28), (64, 48), (120, 160), (300, 400))  # (height, width) of the pages drawn


@cache
def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / f"{name}.ttf"), size)


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return SIZES[rng.integers(len(SIZES))]


def _paper_and_ink(rng: np.random.Generator) -> tuple[int, int]:
    """Dark ink on light paper, or light on dark as MNIST is, half the time each."""
    light, dark = int(rng.integers(170, 256)), int(rng.integers(0, 81))
    return (light, dark) if rng.random() < 0.5 else (dark, light)


def blank_pages(count: int, rng: np.random.Generator) -> list[Page]:
    """Uniform pages of evenly spread shades, some with faint noise (under 8 grey levels)."""
    pages = []
    for shade in np.linspace(0, 255, count):
        page = np.full(_size(rng), shade, dtype=np.float32)
        if rng.random() < 0.5:
            page += rng.uniform(-8, 8, page.shape).astype(np.float32)
        pages.append((np.clip(page, 0, 255), f"shade {shade:.0f}"))
    return pages


def noise_pages(count: int, rng: np.random.Generator) -> list[Page]:
    """Uniform random noise, grey or colour (turned grey as Pillow does for a file)."""
    pages = []
    for _ in range(count):
        height, width = _size(rng)
        if rng.random() < 0.5:
            pages.append((rng.uniform(0, 255, (height, width)).astype(np.float32), "grey"))
            continue
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
        pages.append((grey, "colour"))
    return pages


def _drawn(
    rng: np.random.Generator, draw: Callable[[ImageDraw.ImageDraw, int, int], None]
) -> np.ndarray:
    """A page of random size and polarity with `draw(canvas, shorter side, ink)` on it; in
    Pillow's 8-bit grey mode, whose text is anti-aliased."""
    height, width = _size(rng)
    paper, ink = _paper_and_ink(rng)
    image = Image.new("L", (width, height), paper)
    draw(ImageDraw.Draw(image), min(height, width), ink)
    return np.asarray(image, dtype=np.float32)


def dot_pages(count: int, rng: np.random.Generator) -> list[Page]:
    """One to three round dots of radius 1/30 to 1/10 of the page's shorter side."""

    def dots(canvas: ImageDraw.ImageDraw, side: int, ink: int) -> None:
        for _ in range(number):
            radius = max(1.0, rng.uniform(side / 30, side / 10))
            x, y = rng.uniform(radius, side - radius, 2)
            canvas.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)

    pages = []
    for _ in range(count):
        number = int(rng.integers(1, 4))
        pages.append((_drawn(rng, dots), f"{number} dots"))
    return pages


def stroke_pages(count: int, rng: np.random.Generator) -> list[Page]:
    """Scribbles: a pen line through three to six random points."""

    def scribble(canvas: ImageDraw.ImageDraw, side: int, ink: int) -> None:
        points = [tuple(point) for point in rng.uniform(0.1 * side, 0.9 * side, (number, 2))]
        canvas.line(points, fill=ink, width=max(1, round(side / 12)), joint="curve")

    pages = []
    for _ in range(count):
        number = int(rng.integers(3, 7))
        pages.append((_drawn(rng, scribble), f"{number} points"))
    return pages


def glyph_page(char: str, font_name: str, rng: np.random.Generator) -> np.ndarray:
    """One printed character at a random size and place on a page of random polarity."""

    def glyph(canvas: ImageDraw.ImageDraw, side: int, ink: int) -> None:
        size = max(8, round(side * rng.uniform(0.4, 0.7)))
        left, top, right, bottom = canvas.textbbox((0, 0), char, font=font(font_name, size))
        x = rng.uniform(0, max(1.0, side - (right - left))) - left
        y = rng.uniform(0, max(1.0, side - (bottom - top))) - top
        canvas.text((x, y), char, fill=ink, font=font(font_name, size))

    return _drawn(rng, glyph)


def letter_pages(count: int, rng: np.random.Generator) -> list[Page]:
    """Latin letters a-z and A-Z in turn, each in the fonts of LETTER_FONTS in turn."""
    pages = []
    for index in range(count):
        char = LETTERS[index % len(LETTERS)]
        font_name = LETTER_FONTS[index // len(LETTERS) % len(LETTER_FONTS)]
        pages.append((glyph_page(char, font_name, rng), f"{char} {font_name}"))
    return pages


# Kind -> (pages of that kind, how many the evaluation draws). Every kind is evaluated.
OOD_KINDS: dict[str, tuple[Callable[[int, np.random.Generator], list[Page]], int]] = {
    "blank": (blank_pages, 256),
    "noise": (noise_pages, 500),
    "dots": (dot_pages, 500),
    "strokes": (stroke_pages, 500),
    "letters": (letter_pages, 4 * len(LETTERS)),
}


def ood_pages(kind: str, seed: int) -> list[Page]:
    make, count = OOD_KINDS[kind]
    return make(count, np.random.default_rng([seed, list(OOD_KINDS).index(kind)]))


def training_outliers(count: int, seed: int) -> np.ndarray:
    """(count, 28, 28) uint8 inputs that are not digits, as the preprocessing gives them: noise,
    dots, scribbles and printed glyphs in equal shares (pages it refuses are drawn again)."""
    rng = np.random.default_rng([seed, 1_000_003])  # never the evaluation's streams

    def glyphs(number: int, rng: np.random.Generator) -> list[Page]:
        chars = rng.choice(list(TRAINING_GLYPHS), number)
        names = rng.choice(TRAINING_FONTS, number)
        return [(glyph_page(c, f, rng), c) for c, f in zip(chars, names, strict=True)]

    makers = (noise_pages, dot_pages, stroke_pages, glyphs)
    images: list[np.ndarray] = []
    while len(images) < count:
        for page, _ in makers[len(images) % len(makers)](1, rng):
            try:
                images.append(to_mnist(page))
            except ImageError:  # refused before the model: nothing to learn from
                continue
    return np.stack(images)
