"""People's digit images turned into MNIST's format, the way MNIST itself was made.

The predict command and the server use it on every image; `evaluate` on the foreign digits.

MNIST digits are light ink on black, fitted into a 20x20 box (aspect kept, anti-aliased) and
placed in a 28x28 canvas so that their centre of mass is at the centre. A photo or a scan is
dark ink on light paper, of any size, anywhere on the page, under uneven light, with noise,
JPEG artefacts and perhaps a notebook's lines. So `to_mnist`, step by step:

1. `load_grey`: decodes (a JPEG at reduced scale) and shrinks the image to `WORK_SIDE` px;
2. `ink_level`: decides the ink's polarity from the page's extremes, estimates the paper's
   level under every pixel (ink.background: shadows, vignetting), measures the ink against
   it, and keeps what stands out of the noise and of faint lines (`NOISE_SIGMAS`,
   `INK_SHARE`), a notebook's ruled lines left out;
3. `digit_components`: the connected components that form the digit, specks dropped;
   `require_span` refuses a dot;
4. `digit_image`: crops to the strokes, scales their ink so that a stroke's core is full,
   brings the stroke width into MNIST's range (`WIDTH_RANGE`), fits the longer side to 20 px
   and centres by mass.

Blank, faint and speck-sized ink is refused (`NoInkError`) before any model sees it.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnistpipe.deploy import ink
from mnistpipe.errors import PipelineError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs)
CANVAS, BOX = 28, 20  # MNIST's canvas and the box its digits are fitted into, in pixels
MIN_CONTRAST = 32.0  # ink must differ from the paper by this much (0-255) to count as ink
# The ink's longer side must span this share of the image's shorter side. MNIST's digits span
# 20/28 = 71% of theirs; a fifth still takes a digit photographed 3.5 times smaller, and
# refuses a dot or a speck, which scaling to 20x20 would otherwise blow up into a blob.
MIN_INK_SPAN = 0.2
WORK_SIDE = 800  # px: larger images are shrunk to this longer side as they are decoded
SMALL_PAGE = 64  # px: a shorter side under this is a drawing or an MNIST image, evenly lit
NOISE_SIGMAS = 4.0  # ink stands out of the paper by this many deviations of the noise
INK_SHARE = 0.4  # and by this share of the strongest ink (a notebook's lines are fainter)
LINE_SPAN = 0.85  # a straight run over this share of the page is a notebook's line
MIN_PIECE = 0.04  # pieces of a digit have at least this share of its largest piece's area
PIECE_GAP = 0.3  # and lie within this share of the digit's size of it
WIDTH_RANGE = (0.09, 0.22)  # MNIST's stroke widths, as shares of the digit's longer side


T = TypeVar("T")


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
                # A JPEG decodes at 1/2 to 1/8 of its size when that still leaves WORK_SIDE
                # px: a 12-megapixel photo in a tenth of the time (no-op for other formats).
                scale = WORK_SIDE / max(width, height)
                image.draft("L", (math.ceil(width * scale), math.ceil(height * scale)))
                image = ImageOps.exif_transpose(image)
                if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                    paper = Image.new("RGBA", image.size, "white")
                    image = Image.alpha_composite(paper, image.convert("RGBA"))
                image = image.convert("L")
                if max(image.size) > WORK_SIDE:
                    image.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
                return np.asarray(image, dtype=np.float32)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt image data
        raise ImageError(f"{path}: unreadable image ({exc})") from None


def ink_level(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ink on a page: its (H, W) float32 level on a zero background (levels above the
    paper's, light ink or inverted dark ink) and the (H, W) bool mask of what stands out of
    the paper by more than the noise (`NOISE_SIGMAS` times its robust deviation) and by more
    than `INK_SHARE` of the strongest ink, a notebook's lines left out. A blank or faint page
    is refused (`NoInkError`)."""
    # The ink is the side that strays furthest from the page's typical level: dark ink on
    # paper however shaded, light ink on a dark screen.
    extremes, typical = ink.box_mean(grey, 3), float(np.median(grey))
    dark_ink = typical - float(extremes.min()) > float(extremes.max()) - typical
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    small = min(grey.shape) < SMALL_PAGE  # a drawing or an MNIST image: evenly lit, no noise
    if small:
        paper = np.full(grey.shape, np.median(border), dtype=np.float32)
    else:
        paper = ink.background(grey, dark_ink)
    # Light falls on paper and ink alike: dark ink is measured as the share of the paper's
    # light it takes away (in 0-255 units), so that a stroke reads the same in a shadow (down
    # to half the light: darker "paper" is no paper, and its noise is not blown up); light
    # ink on dark paper is a screen's, lit evenly.
    lit = (paper - grey) * (255.0 / np.maximum(paper, 127.5))
    level = lit if dark_ink else grey - paper
    smooth = ink.box_mean(level, 3)  # a third of the noise, strokes barely touched
    strength = float(smooth.max())
    if strength < MIN_CONTRAST:
        raise NoInkError("no ink found (the image is blank or has too little contrast)")
    # The noise's robust deviation, from a quarter of the pixels (as good, in less time); a
    # small page has none to speak of, and its ink may cover half of it.
    noise = 0.0 if small else robust_deviation(smooth[::2, ::2])
    mask = smooth > max(NOISE_SIGMAS * noise, INK_SHARE * strength)
    mask &= ~ink.notebook_lines(mask, LINE_SPAN)
    return np.clip(level, 0.0, None), mask


def robust_deviation(values: np.ndarray) -> float:
    """The standard deviation of Gaussian noise estimated from `values` by the median absolute
    deviation: outliers (the ink) barely move it."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def ink_strokes(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ink of a picture of one digit: `ink_level`, and the (H, W) bool mask of the
    digit's strokes: the connected components of what stands out that lie near the largest
    and are not specks. Blank, faint and speck-sized ink is refused (`NoInkError`)."""
    level, mask = ink_level(grey)
    strokes = digit_components(mask)
    require_span(strokes)
    return level, strokes


def require_span(ink: np.ndarray) -> None:
    """Refuse (`NoInkError`) ink (H, W bool) whose longer side spans under MIN_INK_SPAN of
    the image's shorter side: a dot or a speck."""
    rows, cols = np.nonzero(ink)
    span = max(np.ptp(rows), np.ptp(cols)) + 1 if len(rows) else 0
    if span < MIN_INK_SPAN * min(ink.shape):
        raise NoInkError(
            f"too little ink for a digit: it spans {span} px, under {MIN_INK_SPAN:.0%} of the"
            f" image's shorter side ({min(ink.shape)} px); a dot or a speck"
        )


def digit_components(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the connected components (8-connected) of `mask` that form the digit: the
    largest, and those of at least `MIN_PIECE` of its area whose boxes come within
    `PIECE_GAP` of the digit's size of the box so far (a broken stroke, a 5's cap)."""
    found = ink.components(mask)
    if found.count == 0:
        raise NoInkError("no ink found (only noise stands out of the paper)")
    areas, boxes = found.areas, found.boxes
    order = np.argsort(-areas, kind="stable")
    top, left, bottom, right = boxes[order[0]]
    keep = [order[0]]
    for index in order[1:]:
        if areas[index] < MIN_PIECE * areas[order[0]]:
            break
        t, lft, b, r = boxes[index]
        gap = PIECE_GAP * max(bottom - top, right - left)
        if t < bottom + gap and b > top - gap and lft < right + gap and r > left - gap:
            keep.append(index)
            top, left, bottom, right = min(top, t), min(left, lft), max(bottom, b), max(right, r)
    return found.mask(np.array(keep))


def stroke_width(strokes: np.ndarray) -> float:
    """The strokes' mean width in px: twice their area over their outline's length."""
    framed = np.pad(strokes, 1)  # paper around, so that the box's edge is an outline too
    outline = framed & ~ink.rank_filter(framed, 3, largest=False)
    return 2.0 * float(strokes.sum()) / max(1.0, float(outline.sum()))


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
    Otherwise the digit's strokes (`ink_strokes`) are cropped, their ink scaled so that a
    stroke's core is full, their width brought into MNIST's range, and the longer side fitted
    to 20 px and centred by mass. Blank, faint and speck-sized ink is refused (`NoInkError`).
    """
    if grey.shape == (CANVAS, CANVAS) and np.median(grey) <= 127.5:
        _, mask = ink_level(grey)  # blank or faint: refused; a speck: refused
        require_span(mask)  # all of the ink: a digit broken into pieces still counts
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return digit_image(*ink_strokes(grey))


def digit_image(level: np.ndarray, strokes: np.ndarray) -> np.ndarray:
    """The (28, 28) uint8 MNIST-style image of one digit's strokes (H, W) bool on an ink
    level map: cropped, the ink scaled so that a stroke's core is full, the width brought into
    MNIST's range, the longer side fitted to 20 px and centred by mass."""
    rows, cols = np.nonzero(strokes)
    box = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    core = float(np.percentile(level[strokes], 90))  # a stroke's middle, not its rim
    near = ink.rank_filter(np.pad(strokes[box], 2), 5, largest=True)[2:-2, 2:-2]  # the rims
    digit = np.clip(level[box] / core, 0.0, 1.0) * near
    digit = normalise_width(digit, digit >= 0.5)  # the strokes' cores: half the ink or more
    height, width = digit.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Area averaging when shrinking is the anti-aliasing MNIST used; bilinear when enlarging.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    digit = np.asarray(Image.fromarray(digit, mode="F").resize(size, resample), dtype=np.float32)
    if not digit.any():  # the resizing left nothing: too thin or small to read
        raise NoInkError("too little ink for a digit: its strokes vanish at 20x20 px")
    canvas = centre_by_mass(np.clip(digit, 0.0, 1.0))
    return np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8)


def normalise_width(digit: np.ndarray, strokes: np.ndarray) -> np.ndarray:
    """Thin pencil widened and thick marker narrowed (a max or min filter) into the range of
    MNIST's stroke widths, relative to the digit's size: `WIDTH_RANGE` of its longer side."""
    span = max(digit.shape)
    width = stroke_width(strokes)
    low, high = (share * span for share in WIDTH_RANGE)
    if width < low:
        return ink.rank_filter(digit, round(low - width) | 1, largest=True)
    if width > high:
        # at most half the width off, so that a blob (a dot) keeps its core
        return ink.rank_filter(digit, int(min(width - high, width / 2)) | 1, largest=False)
    return digit


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
    return with_name(str(path), lambda: to_mnist(load_grey(path)))


def prepare_bytes(data: bytes, name: str) -> np.ndarray:
    """The (28, 28) uint8 MNIST-style image of an uploaded file's bytes; errors say `name`."""
    if not data:
        raise ImageError(f"{name}: empty file")
    return with_name(name, lambda: to_mnist(load_grey(io.BytesIO(data), name)))


FOREIGN_DIGITS = 500  # of scikit-learn's 1,797 8x8 digits: the evaluate stage's foreign set


def with_name(name: str, convert: Callable[[], T]) -> T:
    """`convert()`, its ImageError's message beginning with `name` (a file's, an upload's)."""
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
