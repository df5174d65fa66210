"""Test digits rendered as people photograph them, under each condition the predict command
must survive: the evaluate stage scores them through the predict command's own decoding and
preprocessing (`imaging.prepare_bytes`).

A photo is an encoded file (JPEG or PNG bytes): one MNIST digit, upscaled and given a stroke
width, rotated a little and put anywhere on a page of paper, under the condition's light, paper,
pen and camera. Everything is drawn in Pillow's 8-bit modes and NumPy integer or float64
arithmetic without transcendental functions, so a seed gives the same bytes on every CPU.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mnistpipe.modeling.synthetic import LETTER_FONTS, LETTERS, font

RGB = tuple[int, int, int]
PAGE_SIZES = ((240, 320), (320, 240), (300, 400), (400, 300), (480, 640), (640, 480))
PHONE_SIZE = (3024, 4032)  # (height, width): a 12-megapixel phone photo
SPAN_OF_CANVAS = 20 / 28  # an MNIST digit's ink spans this share of its 28 px canvas


@dataclass(frozen=True)
class Look:
    """How one photo is taken. Sizes are shares of the page's shorter side."""

    span: tuple[float, float] = (0.4, 0.8)  # the digit's longer side, a range to draw from
    stroke: tuple[int, int] = (96, 144)  # level of the upscaled digit taken as its edge (0-255):
    # higher is thinner; MNIST's own strokes sit at about 128
    thicken: int = 0  # a max filter of this size (px, odd) on the ink: a marker's width
    rotate: float = 8.0  # degrees, either way
    ink: tuple[RGB, ...] = ((25, 25, 30), (40, 40, 45), (15, 20, 40))
    paper: tuple[int, int] = (215, 250)  # grey level of the paper
    shade: float = 0.0  # the darkest point of the light falling on the page, as a share
    rules: str = ""  # "" none, "ruled" horizontal lines, "squared" both ways
    blur: tuple[float, float] = (0.0, 0.6)  # Gaussian radius, px
    noise: tuple[float, float] = (1.0, 3.0)  # sensor noise, standard deviation in grey levels
    jpeg: tuple[int, int] = (80, 95)  # quality; 0 saves a PNG
    phone: bool = False  # drawn at a quarter of PHONE_SIZE, saved at full size


BASE = Look()
# Condition -> how its photos are taken: each varies one thing from a clean, well-lit photo.
CONDITIONS: dict[str, Look] = {
    "clean": replace(BASE, jpeg=(0, 0)),
    "shadow": replace(BASE, shade=0.45),
    "noisy": replace(BASE, blur=(0.5, 1.5), noise=(4.0, 8.0), jpeg=(40, 70)),
    "pencil": replace(BASE, stroke=(170, 210), ink=((110, 110, 115), (130, 130, 135))),
    "marker": replace(BASE, stroke=(60, 90), thicken=5, ink=((10, 10, 10),)),
    "colour pen": replace(BASE, ink=((30, 50, 170), (20, 30, 120), (190, 30, 35))),
    "ruled": replace(BASE, rules="ruled"),
    "squared": replace(BASE, rules="squared"),
    "small": replace(BASE, span=(0.22, 0.32), rotate=12.0),
    "phone": replace(BASE, phone=True),
}


def _digit_mask(digit: np.ndarray, side: int, look: Look, rng: np.random.Generator) -> Image:
    """The digit's ink coverage ('L', 0-255) at `side` px per 28 px, with the look's stroke
    width and a small rotation."""
    upscaled = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    edge = int(rng.integers(look.stroke[0], look.stroke[1] + 1))
    soft = max(8, side // 12)  # the anti-aliased rim, in levels of the upscaled digit
    lut = np.clip((np.arange(256) - edge) * 255 // soft + 128, 0, 255)
    mask = upscaled.point(lut.tolist())
    if look.thicken:
        mask = mask.filter(ImageFilter.MaxFilter(look.thicken))
    angle = float(rng.uniform(-look.rotate, look.rotate))
    mask = mask.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    return mask.crop(mask.getbbox())  # the ink alone, so that it can be put wholly on the page


def _rules(page: Image, look: Look, rng: np.random.Generator) -> None:
    """Notebook lines, light blue (ruled) or grey-blue (squared), edge to edge."""
    width, height = page.size
    draw = ImageDraw.Draw(page)
    spacing = int(min(width, height) * rng.uniform(0.06, 0.12))
    line_width = max(1, min(width, height) // 200)
    colour = (150, 185, 225) if look.rules == "ruled" else (165, 175, 200)
    for y in range(int(rng.integers(spacing)), height, spacing):
        draw.line([(0, y), (width, y)], fill=colour, width=line_width)
    if look.rules == "squared":
        for x in range(int(rng.integers(spacing)), width, spacing):
            draw.line([(x, 0), (x, height)], fill=colour, width=line_width)


def _light(height: int, width: int, darkest: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 1) float64 light falling on the page, 1 at its brightest and `darkest` at the
    dim end: a gradient across the page, a vignette, or a soft-edged shadow."""
    y, x = np.mgrid[0:height, 0:width] / np.float64(max(height, width))
    kind = int(rng.integers(3))
    if kind == 0:  # a gradient in a random direction
        a, b = rng.uniform(-1, 1, 2)
        ramp = a * x + b * y
    elif kind == 1:  # a vignette, darker away from a point near the centre
        cy, cx = rng.uniform(0.3, 0.7, 2) * (height, width) / np.float64(max(height, width))
        ramp = (x - cx) ** 2 + (y - cy) ** 2
    else:  # a shadow's edge, a straight line softened over a tenth of the page
        a, b = rng.uniform(-1, 1, 2)
        ramp = np.clip((a * x + b * y - (a + b) / 2) * 10, -0.5, 0.5)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
    return (1.0 - (1.0 - darkest) * ramp)[..., None]


# What became of a photo: answered with its digit; answered with another; flagged as not
# looking like a digit; refused by the preprocessing (no ink found, a speck).
RIGHT = "answered_right"
OUTCOMES = (RIGHT, "wrong", "flagged", "refused")


def photo_metric(condition: str, outcome: str) -> str:
    """The metrics.json key of one outcome's share under one condition: ("colour pen",
    "flagged") -> "photo_colour_pen_flagged"."""
    return f"photo_{condition.replace(' ', '_')}_{outcome}"


@dataclass(frozen=True)
class Photo:
    """One rendered photo: its condition, a file name (with the format's suffix), the digit it
    shows and the file's bytes."""

    condition: str
    name: str
    label: int
    data: bytes


def render(digit: np.ndarray, look: Look, rng: np.random.Generator) -> tuple[bytes, str]:
    """One (28, 28) uint8 MNIST digit (light on black) photographed as `look` says: the JPEG or
    PNG file's bytes of a dark-ink-on-light-paper page, and its suffix."""
    height, width = PAGE_SIZES[int(rng.integers(len(PAGE_SIZES)))]
    if look.phone:
        height, width = PHONE_SIZE[0] // 4, PHONE_SIZE[1] // 4
    span = rng.uniform(*look.span) * min(height, width)
    mask = _digit_mask(digit, max(8, round(span / SPAN_OF_CANVAS)), look, rng)
    return photograph(mask, (height, width), look, rng)


def render_row(
    digits: list[np.ndarray], look: Look, rng: np.random.Generator
) -> tuple[bytes, str]:
    """A row of (28, 28) uint8 MNIST digits written side by side, a little apart and a
    little up and down, photographed as `look` says (`render`)."""
    height = int(rng.integers(200, 361))
    side = max(8, round(height * rng.uniform(0.3, 0.55) / SPAN_OF_CANVAS))
    mask = _row_mask([_digit_mask(d, side, look, rng) for d in digits], rng)
    return photograph(mask, row_page(mask, height, rng), look, rng)


def render_word(
    word: str, font_name: str, look: Look, rng: np.random.Generator
) -> tuple[bytes, str]:
    """A printed word photographed as `look` says, as `render_row` photographs digits."""
    height = int(rng.integers(200, 361))
    size = max(8, round(height * rng.uniform(0.3, 0.55)))
    canvas = Image.new("L", (size * (len(word) + 1), 2 * size), 0)
    ImageDraw.Draw(canvas).text((size // 2, size // 2), word, fill=255, font=font(font_name, size))
    mask = canvas.crop(canvas.getbbox())
    return photograph(mask, row_page(mask, height, rng), look, rng)


def row_page(mask: Image.Image, height: int, rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) of the page for a row of ink `mask`: `height` px (or the ink's, if
    taller), and as wide as needed for the ink to span 60-90% of it."""
    return max(height, mask.height + 2), max(height, round(mask.width / rng.uniform(0.6, 0.9)))


def _row_mask(masks: list[Image.Image], rng: np.random.Generator) -> Image.Image:
    """Digit masks side by side on one mask: gaps of 5-40% of a digit's height, each digit
    raised or lowered by up to 8% of it."""
    tallest = max(mask.height for mask in masks)
    gaps = [round(g * tallest) for g in rng.uniform(0.05, 0.4, len(masks) - 1)]
    shifts = [round(s * tallest) for s in rng.uniform(-0.08, 0.08, len(masks))]
    width = sum(mask.width for mask in masks) + sum(gaps)
    row = Image.new("L", (width, tallest + 2 * round(0.08 * tallest) + 1), 0)
    left = 0
    for mask, gap, shift in zip(masks, [*gaps, 0], shifts, strict=True):
        top = round(0.08 * tallest) + tallest - mask.height + shift  # on one baseline
        row.paste(mask, (left, top), mask)
        left += mask.width + gap
    return row.crop(row.getbbox())


def photograph(
    mask: Image.Image, size: tuple[int, int], look: Look, rng: np.random.Generator
) -> tuple[bytes, str]:
    """Ink of coverage `mask` ('L') put on a page of `size` (height, width) px and
    photographed as `look` says: paper, notebook lines, pen colour, blur, light, noise and the
    file format. Returns the file's bytes and suffix."""
    height, width = size
    level = int(rng.integers(look.paper[0], look.paper[1] + 1))
    tint = rng.integers(-6, 7, 3)  # white balance
    paper = Image.new("RGB", (width, height), tuple(int(v) for v in np.clip(level + tint, 0, 255)))
    if look.rules:
        _rules(paper, look, rng)
    ink = look.ink[int(rng.integers(len(look.ink)))]
    left = int(rng.integers(0, max(1, width - mask.width)))
    top = int(rng.integers(0, max(1, height - mask.height)))
    paper.paste(Image.new("RGB", mask.size, ink), (left, top), mask)
    radius = float(rng.uniform(*look.blur))
    if radius > 0:
        paper = paper.filter(ImageFilter.GaussianBlur(radius))
    pixels = np.asarray(paper, dtype=np.float64)
    if look.shade:
        pixels = pixels * _light(height, width, 1.0 - look.shade, rng)
    pixels += rng.normal(0.0, rng.uniform(*look.noise), pixels.shape)
    photo = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if look.phone:
        photo = photo.resize(PHONE_SIZE[::-1], Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    quality = int(rng.integers(look.jpeg[0], look.jpeg[1] + 1))
    if quality:
        photo.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue(), ".jpg"
    photo.save(buffer, format="PNG", compress_level=1)  # noise barely compresses
    return buffer.getvalue(), ".png"


def photos(
    images: np.ndarray, labels: np.ndarray, count: int, seed: int, workers: int = 1
) -> list[Photo]:
    """`count` photos per condition of the first `count` digits of `images` (N, 28, 28) uint8
    with their `labels`, drawn from `seed`, in CONDITIONS' order: every condition photographs
    the same digits, so that the conditions alone differ. Conditions are drawn on `workers`
    threads, each from its own stream: the same photos for any number."""

    def condition_photos(index: int, condition: str) -> list[Photo]:
        look, rng = CONDITIONS[condition], np.random.default_rng([seed, 2_000_003, index])
        found = []
        for number, (digit, label) in enumerate(zip(images[:count], labels[:count], strict=True)):
            data, suffix = render(digit, look, rng)
            name = f"{condition.replace(' ', '-')}-{number:04d}{suffix}"
            found.append(Photo(condition, name, int(label), data))
        return found

    with ThreadPoolExecutor(max(1, workers)) as executor:
        drawn = executor.map(condition_photos, range(len(CONDITIONS)), CONDITIONS)
        return [photo for condition in drawn for photo in condition]


@dataclass(frozen=True)
class Row:
    """A photographed row: of test digits (`truth` is the number) or of printed letters (a
    word, which should not read as a number)."""

    kind: str  # "digits" or "words"
    name: str
    truth: str
    data: bytes


ROW_LENGTHS = (2, 5)  # digits or letters in a row, at least and at most


def number_rows(images: np.ndarray, labels: np.ndarray, count: int, seed: int) -> list[Row]:
    """`count` rows of 2-5 test digits drawn at random from `images` (N, 28, 28) with their
    `labels`, then `count` printed words of 2-5 Latin letters in the fonts of LETTER_FONTS in
    turn, photographed as a clean photo is (BASE), from `seed`."""
    rng = np.random.default_rng([seed, 3_000_017])  # not the single photos' streams
    found = []
    for number in range(count):
        chosen = rng.integers(
            0, len(images), int(rng.integers(ROW_LENGTHS[0], ROW_LENGTHS[1] + 1))
        )
        data, suffix = render_row(list(images[chosen]), BASE, rng)
        truth = "".join(str(int(label)) for label in labels[chosen])
        found.append(Row("digits", f"number-{number:04d}{suffix}", truth, data))
    for number in range(count):
        length = int(rng.integers(ROW_LENGTHS[0], ROW_LENGTHS[1] + 1))
        word = "".join(rng.choice(list(LETTERS), length))
        data, suffix = render_word(word, LETTER_FONTS[number % len(LETTER_FONTS)], BASE, rng)
        found.append(Row("words", f"word-{number:04d}{suffix}", word, data))
    return found
