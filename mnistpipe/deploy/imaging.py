"""People's digit images turned into MNIST's format, the way MNIST itself was made.

The predict command and the server use it on every image; `evaluate` on the foreign digits.

MNIST digits are light ink on black, fitted into a 20x20 box (aspect kept, anti-aliased) and
placed in a 28x28 canvas so that their centre of mass is at the centre. A photo or a scan is
dark ink on light paper, of any size, anywhere on the page: `to_mnist` inverts it when needed,
crops to the ink, scales the longer side to 20 px and centres it by mass.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnistpipe.errors import PipelineError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs)
CANVAS, BOX = 28, 20  # MNIST's canvas and the box its digits are fitted into, in pixels
MIN_CONTRAST = 32.0  # ink must differ from the paper by this much (0-255) to count as ink
# The ink's longer side must span this share of the image's shorter side. MNIST's digits span
# 20/28 = 71% of theirs; a fifth still takes a digit photographed 3.5 times smaller, and
# refuses a dot or a speck, which scaling to 20x20 would otherwise blow up into a blob.
MIN_INK_SPAN = 0.2


class ImageError(PipelineError):
    pass


class ImageTooLargeError(ImageError):
    """More pixels than MAX_PIXELS (or PIL's own limit): a decompression bomb."""


class NoInkError(ImageError):
    """A readable image with no digit on it: blank, too little contrast, or a mere speck."""


def load_grey(source: str | Path | BinaryIO, name: str | None = None) -> np.ndarray:
    """(H, W) float32 grey levels 0-255 of an image file or file object; transparency is
    white paper. Errors begin with `name` (default: the path)."""
    path = name or str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageTooLargeError(
                        f"{path}: refused as a decompression bomb: {width}x{height} pixels"
                        f" is over the limit of {MAX_PIXELS:,}"
                    )
                image.seek(0)  # the first frame of an animated GIF or multi-page TIFF
                image = ImageOps.exif_transpose(image)
                if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                    paper = Image.new("RGBA", image.size, "white")
                    image = Image.alpha_composite(paper, image.convert("RGBA"))
                return np.asarray(image.convert("L"), dtype=np.float32)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt image data
        raise ImageError(f"{path}: unreadable image ({exc})") from None


def ink_map(grey: np.ndarray) -> np.ndarray:
    """Ink intensity 0-1 on a zero background: inverted when the paper is lighter than the ink.

    The paper's level is the median of the image border, which is paper on any sensible
    picture of one digit.
    """
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    paper = float(np.median(border))
    ink = (paper - grey) if paper > 127.5 else (grey - paper)
    ink = np.clip(ink, 0.0, None)
    if ink.max() < MIN_CONTRAST:
        raise NoInkError("no ink found (the image is blank or has too little contrast)")
    ink /= ink.max()
    rows, cols = np.nonzero(ink > 0.5)
    span = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    if span < MIN_INK_SPAN * min(grey.shape):
        raise NoInkError(
            f"too little ink for a digit: it spans {span} px, under {MIN_INK_SPAN:.0%} of the"
            f" image's shorter side ({min(grey.shape)} px); a dot or a speck"
        )
    return ink


def centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Place a digit of at most 20x20 in a 28x28 canvas with its centre of mass at the centre."""
    rows, cols = np.indices(digit.shape)
    mass = digit.sum()
    com_row, com_col = (rows * digit).sum() / mass, (cols * digit).sum() / mass
    top = int(np.clip(round(CANVAS / 2 - 0.5 - com_row), 0, CANVAS - digit.shape[0]))
    left = int(np.clip(round(CANVAS / 2 - 0.5 - com_col), 0, CANVAS - digit.shape[1]))
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return canvas


def to_mnist(grey: np.ndarray) -> np.ndarray:
    """(H, W) grey levels -> (28, 28) uint8 MNIST-style image: light digit on black.

    A 28x28 image that is already light on dark is taken as it is: it is in MNIST's format.
    Blank, faint and speck-sized ink is refused (`NoInkError`) in both cases, light or dark.
    """
    ink = ink_map(grey)
    if grey.shape == (CANVAS, CANVAS) and np.median(grey) <= 127.5:
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    rows, cols = np.nonzero(ink > 0.05)  # faint noise does not stretch the box
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = ink.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Area averaging when shrinking is the anti-aliasing MNIST used; bilinear when enlarging.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    digit = np.asarray(Image.fromarray(ink, mode="F").resize(size, resample), dtype=np.float32)
    canvas = centre_by_mass(np.clip(digit, 0.0, 1.0))
    return np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8)


def find_images(paths: list[Path]) -> list[Path]:
    """Files as given, and the image files inside folders (recursively, sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
        else:
            found.append(path)
    return found


def prepare(path: str | Path) -> np.ndarray:
    """The (28, 28) uint8 MNIST-style image of an image file; errors name the file."""
    return _named(str(path), lambda: to_mnist(load_grey(path)))


def prepare_bytes(data: bytes, name: str) -> np.ndarray:
    """The (28, 28) uint8 MNIST-style image of an uploaded file's bytes; errors say `name`."""
    if not data:
        raise ImageError(f"{name}: empty file")
    return _named(name, lambda: to_mnist(load_grey(io.BytesIO(data), name)))


FOREIGN_DIGITS = 500  # of scikit-learn's 1,797 8x8 digits: the evaluate stage's foreign set


def _named(name: str, convert: Callable[[], np.ndarray]) -> np.ndarray:
    try:
        return convert()
    except ImageError as exc:  # same class, message prefixed with the file's name
        message = str(exc)
        raise type(exc)(message if message.startswith(name) else f"{name}: {message}") from None


def foreign_digit_pages(
    count: int = FOREIGN_DIGITS, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """Digits from outside MNIST, as a person would photograph them: scikit-learn's 8x8
    handwritten digits (another set of writers and scanner, bundled with scikit-learn), as dark
    ink on a 200x160 light page at random offsets. Returns the pages and their labels."""
    from sklearn.datasets import load_digits  # only evaluate and the benchmark need it

    digits, rng = load_digits(), np.random.default_rng(seed)
    pages = []
    for image in digits.images[:count]:
        ink = Image.fromarray(np.uint8(image / 16 * 255))
        ink = ink.resize((64, 64), Image.Resampling.BILINEAR)
        page = np.full((160, 200), 235.0, dtype=np.float32)
        top, left = rng.integers(0, 160 - 64), rng.integers(0, 200 - 64)
        page[top : top + 64, left : left + 64] -= np.asarray(ink, np.float32) / 255 * 200
        pages.append(page)
    return pages, digits.target[:count]
