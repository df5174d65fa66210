"""deploy/ink.py against SciPy's ndimage (which the apps don't import, to start faster), and
the preprocessing's answers to shaded, ruled and noisy pages checked against the page drawn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from mnistpipe.deploy import ink
from mnistpipe.deploy.imaging import LINE_SPAN, NoInkError, ink_strokes, to_mnist

EIGHT = np.ones((3, 3), dtype=bool)


def random_masks(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        height, width = rng.integers(1, 45, 2)
        yield rng.random((height, width)) < rng.uniform(0.05, 0.75)


def test_components_are_scipys_8_connected_labels_with_their_areas_and_boxes():
    for mask in random_masks(300):
        found = ink.components(mask)
        labels, count = ndi.label(mask, structure=EIGHT)
        assert found.count == count
        painted = np.zeros(mask.shape, dtype=np.int64)
        for index in range(found.count):
            painted[found.mask(np.array([index]))] = index + 1
        np.testing.assert_array_equal(painted, labels)  # same numbering: first pixel's order
        np.testing.assert_array_equal(found.areas, np.bincount(labels.ravel())[1:])
        boxes = [(r.start, c.start, r.stop, c.stop) for r, c in ndi.find_objects(labels)]
        assert [tuple(box) for box in found.boxes] == boxes


def test_components_of_an_empty_mask_are_none():
    found = ink.components(np.zeros((5, 7), dtype=bool))
    assert found.count == 0 and not found.mask(np.array([], dtype=np.int64)).any()


@pytest.mark.parametrize("size", [1, 3, 5, 13])
def test_rank_filter_and_box_mean_are_scipys_with_the_edges_repeated(size):
    rng = np.random.default_rng(size)
    values = rng.uniform(0, 255, (37, 29)).astype(np.float32)
    for largest, reference in ((True, ndi.maximum_filter), (False, ndi.minimum_filter)):
        expected = reference(values, size=size, mode="nearest")
        np.testing.assert_array_equal(ink.rank_filter(values, size, largest), expected)
    mask = values > 200
    expected = ndi.binary_dilation(np.pad(mask, size), np.ones((size, size)))[size:-size]
    np.testing.assert_array_equal(ink.rank_filter(mask, size, True), expected[:, size:-size])
    mean = ndi.uniform_filter(values.astype(np.float64), size=size, mode="nearest")
    np.testing.assert_allclose(ink.box_mean(values, size), mean, rtol=1e-5, atol=1e-3)


def stroke_page(light: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 300x400 page of paper (230) under `light` (H, W) with a dark 'L' (20) drawn on it,
    and the L's mask."""
    letter = np.zeros((300, 400), dtype=bool)
    letter[60:240, 150:165] = True  # the upright, 180 px: 60% of the height
    letter[225:240, 150:260] = True  # the foot
    page = np.where(letter, 20.0, 230.0) * light
    return page.astype(np.float32), letter


def near(mask: np.ndarray) -> np.ndarray:
    """The mask and the pixels next to it: the smoothing may take in a stroke's rim."""
    return ndi.binary_dilation(mask, EIGHT)


def test_the_paper_is_found_under_a_shadow_and_a_stroke_reads_the_same_in_it():
    light = np.ones((300, 400))
    light[:, :200] = 0.55  # a hard shadow over the left half, through the upright's foot
    page, letter = stroke_page(light)
    level, strokes = ink_strokes(page)
    # every stroke pixel found, nothing else: not the shadow's edge, not its dark half
    assert (strokes & ~near(letter)).sum() == 0
    assert (letter & ~strokes).sum() < 0.02 * letter.sum()
    in_shadow, in_light = level[225:240, 152:198], level[225:240, 202:258]
    assert abs(float(np.median(in_shadow)) - float(np.median(in_light))) < 8


def test_a_gradient_and_noise_leave_only_the_strokes():
    columns = np.linspace(0.6, 1.0, 400)[None, :]
    page, letter = stroke_page(np.broadcast_to(columns, (300, 400)))
    page = page + np.random.default_rng(1).normal(0, 6, page.shape).astype(np.float32)
    _, strokes = ink_strokes(page)
    assert (strokes & ~near(letter)).sum() == 0
    assert (letter & ~strokes).sum() < 0.05 * letter.sum()


def test_a_notebooks_lines_are_dropped_and_a_digits_long_stroke_is_not():
    page, letter = stroke_page(np.ones((300, 400)))
    for row in range(20, 300, 30):
        page[row, :] = 150.0  # ruled lines, edge to edge
    page[:, 390] = 150.0  # and a margin
    _, strokes = ink_strokes(page)
    assert (strokes & ~near(letter)).sum() == 0  # the lines are gone...
    assert (letter & ~strokes).sum() < 0.05 * letter.sum()  # ... the upright and foot stay
    assert LINE_SPAN > 180 / 300  # the upright spans 60% of the height: shorter than a line


@pytest.mark.parametrize("dark_paper", [False, True])
def test_a_speck_beside_the_digit_is_dropped_in_either_polarity(dark_paper):
    page, _ = stroke_page(np.ones((300, 400)))
    page[20:24, 20:24] = 20.0  # a speck of dirt far from the digit
    if dark_paper:
        page = 255.0 - page
    clean, _ = stroke_page(np.ones((300, 400)))
    expected = to_mnist(255.0 - clean if dark_paper else clean)
    np.testing.assert_array_equal(to_mnist(page), expected)


@pytest.mark.parametrize("dark_paper", [False, True])
def test_a_noisy_blank_page_is_refused_in_either_polarity(dark_paper):
    page = np.random.default_rng(2).normal(40 if dark_paper else 220, 8, (300, 400))
    with pytest.raises(NoInkError, match=r"no ink found|too little ink for a digit"):
        to_mnist(page.astype(np.float32))


def test_hairlines_on_a_small_page_keep_their_ink():
    """An '=' of 1 px lines on a 28x28 page: the smoothing widens what is found, the stroke
    width comes from the ink itself, so nothing is thinned away (it was: a NaN centre)."""
    page = np.full((28, 28), 226.0, dtype=np.float32)
    page[18, 6:16] = page[21, 6:16] = 79.0
    image = to_mnist(page)
    assert image.max() > 128 and image.sum() > 0


def test_an_mnist_image_in_pieces_or_on_faintly_noisy_black_is_taken_as_it_is():
    """A 28x28 light-on-dark image is MNIST's format: a digit broken into far-apart pieces
    (as one test digit is) is taken unchanged; a dark page with faint noise is still blank."""
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[6:9, 13:17] = digit[14:17, 10:16] = digit[22:26, 11:14] = 250  # 20 rows apart
    np.testing.assert_array_equal(to_mnist(digit.astype(np.float32)), digit)
    page = 19 + np.random.default_rng(5).uniform(-8, 8, (28, 28))
    with pytest.raises(NoInkError, match="no ink found"):
        to_mnist(page.astype(np.float32))
