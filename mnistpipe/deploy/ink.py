"""Finding the ink on a page: the paper's level under a shadow, the pixels that stand out of
it, a notebook's lines, and connected components, for `imaging.to_mnist`.

Built on Pillow and NumPy, not SciPy's `ndimage`: importing `scipy.ndimage`
takes 0.17-0.25 s (its array-API layer loads `numpy.f2py` and `numpy.testing`), more than half
of the one-image predict command's budget of 0.35 s. The one piece written here that SciPy has,
connected-component labelling, is tested against `scipy.ndimage.label`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

BACKGROUND_SIDE = 48  # px: the shorter side of the image the paper's level is estimated on
BACKGROUND_WINDOW = 13  # px at that size: wider than a marker's stroke on a filled page
BACKGROUND_BLUR = 5  # px at that size: how far the paper is interpolated under the ink


def rank_filter(values: np.ndarray, size: int, largest: bool) -> np.ndarray:
    """The largest (or smallest) value in the size x size window (odd) around each pixel, the
    edges repeated: a grey dilation (erosion), one axis at a time, as a square window allows."""
    return _separable(values, size, np.maximum if largest else np.minimum)


def box_mean(values: np.ndarray, size: int) -> np.ndarray:
    """(H, W) float32 mean over the size x size window (odd) around each pixel, edges repeated
    (summed in float64, one axis at a time)."""
    sums = _separable(values.astype(np.float64), size, np.add)
    return (sums / size**2).astype(np.float32)


def _separable(values: np.ndarray, size: int, combine: np.ufunc) -> np.ndarray:
    """`combine` folded over the size x size window (odd) around each pixel, edges repeated,
    in a fixed order (the same results on every CPU): over each column's window of shifted
    rows, then each row's window of shifted columns (a filter that separates, as max and sum
    do)."""
    half, (height, width) = size // 2, values.shape
    padded = np.empty((height + 2 * half, width + 2 * half), dtype=values.dtype)
    padded[half : half + height, half : half + width] = values
    padded[:half, half : half + width] = values[0]
    padded[half + height :, half : half + width] = values[-1]
    padded[:, :half] = padded[:, half : half + 1]
    padded[:, half + width :] = padded[:, half + width - 1 : half + width]
    columns = padded[:height].copy()
    for offset in range(1, size):
        combine(columns, padded[offset : offset + height], out=columns)
    folded = columns[:, :width].copy()
    for offset in range(1, size):
        combine(folded, columns[:, offset : offset + width], out=folded)
    return folded


def background(grey: np.ndarray, dark_ink: bool) -> np.ndarray:
    """(H, W) float32 level of the paper under every pixel, shadows and vignetting included.

    On the image shrunk to `BACKGROUND_SIDE` px: a morphological closing (opening for light
    ink) wider than any stroke wipes out the strokes however much of its window they cover;
    where it left ink-like bumps (it lifts the foot of a shadow's edge), the paper is then
    interpolated from its surroundings, the ink left out (normalised convolution).
    """
    factor = min(grey.shape) / BACKGROUND_SIDE
    size = (round(grey.shape[1] / factor), round(grey.shape[0] / factor))
    small = Image.fromarray(grey.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX)
    levels = np.asarray(small, dtype=np.float32)
    first = rank_filter(levels, BACKGROUND_WINDOW, largest=dark_ink)
    closed = rank_filter(first, BACKGROUND_WINDOW, largest=not dark_ink)
    ink = (closed - levels) if dark_ink else (levels - closed)
    inky = rank_filter(ink > max(16.0, 0.2 * float(ink.max())), 3, largest=True)
    weight = box_mean(~inky, BACKGROUND_BLUR)
    spread = box_mean(np.where(inky, 0.0, levels), BACKGROUND_BLUR)
    paper = np.where(weight > 0.05, spread / np.maximum(weight, 0.05), closed)
    image = Image.fromarray(paper.astype(np.float32), mode="F")
    return np.asarray(image.resize(grey.shape[::-1], Image.Resampling.BILINEAR), np.float32)


def notebook_lines(mask: np.ndarray, span: float) -> np.ndarray:
    """(H, W) bool: the rows and columns of `mask` that are a ruled or squared notebook's
    straight lines, set over `span` of the page's width (height), and their neighbours (a
    line's anti-aliased rim). A digit's stroke never covers that much of a row."""
    rows = mask.mean(axis=1) >= span
    cols = mask.mean(axis=0) >= span
    rows = rows | np.r_[rows[1:], False] | np.r_[False, rows[:-1]]
    cols = cols | np.r_[cols[1:], False] | np.r_[False, cols[:-1]]
    return (rows[:, None] | cols[None, :]) & mask


@dataclass(frozen=True)
class Components:
    """The 8-connected components of a bool mask, as horizontal runs of set pixels."""

    shape: tuple[int, int]
    row: np.ndarray  # (R,) the run's row
    start: np.ndarray  # (R,) its first column
    stop: np.ndarray  # (R,) one past its last column
    label: np.ndarray  # (R,) its component, 0 to count - 1, numbered by first run
    count: int

    @property
    def areas(self) -> np.ndarray:
        """(count,) pixels per component."""
        return np.bincount(self.label, self.stop - self.start, self.count).astype(np.int64)

    @property
    def boxes(self) -> np.ndarray:
        """(count, 4) int64 top, left, bottom, right (the last two one past the end)."""
        boxes = np.empty((self.count, 4), dtype=np.int64)
        boxes[:, :2], boxes[:, 2:] = np.iinfo(np.int64).max, -1
        np.minimum.at(boxes[:, 0], self.label, self.row)
        np.minimum.at(boxes[:, 1], self.label, self.start)
        np.maximum.at(boxes[:, 2], self.label, self.row + 1)
        np.maximum.at(boxes[:, 3], self.label, self.stop)
        return boxes

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) bool: the pixels of the components in `labels`."""
        chosen = np.isin(self.label, labels)
        flat = np.zeros(self.shape[0] * self.shape[1] + 1, dtype=np.int32)
        offsets = self.row[chosen] * self.shape[1]
        np.add.at(flat, offsets + self.start[chosen], 1)
        np.add.at(flat, offsets + self.stop[chosen], -1)
        return flat.cumsum()[:-1].reshape(self.shape) > 0


def components(mask: np.ndarray) -> Components:
    """The 8-connected components of an (H, W) bool mask: runs in each row, joined with the
    runs of the next row that touch them (diagonals included) by union-find."""
    height, width = mask.shape
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    row, start = np.nonzero(edges == 1)
    stop = np.nonzero(edges == -1)[1]
    parent = np.arange(len(row))

    def root(run: int) -> int:
        while parent[run] != run:
            parent[run] = parent[parent[run]]
            run = parent[run]
        return run

    first = np.searchsorted(row, np.arange(height + 1))  # runs of row r: first[r]:first[r+1]
    for r in range(height - 1):
        upper, lower = first[r], first[r + 1]
        end = first[r + 2]
        while upper < first[r + 1] and lower < end:
            if start[upper] <= stop[lower] and start[lower] <= stop[upper]:  # touching
                a, b = root(upper), root(lower)
                parent[max(a, b)] = min(a, b)
            if stop[upper] < stop[lower]:
                upper += 1
            else:
                lower += 1
    roots = np.array([root(run) for run in range(len(row))], dtype=np.int64)
    unique, label = np.unique(roots, return_inverse=True)
    return Components((height, width), row, start, stop, label.astype(np.int64), len(unique))
