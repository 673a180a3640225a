"""Mask clean-up keeps two lungs, fills holes and drops specks."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from cxrseg.config import InferenceSettings
from cxrseg.inference.engine import finish
from cxrseg.postprocess import (
    EIGHT,
    LEFT,
    RIGHT,
    clean_and_count,
    clean_mask,
    count_components,
    fill_holes,
    lung_sides,
    square_spread,
)
from cxrseg.preprocess import fit_geometry


def test_keeps_two_largest_fills_holes_drops_specks() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:90, 10:40] = True  # right lung (image left)
    mask[10:90, 60:90] = True  # left lung
    mask[40:45, 20:25] = False  # a hole
    mask[5:7, 50:52] = True  # a speck
    mask[92:99, 45:55] = True  # a third, smaller part
    cleaned = clean_mask(mask, min_fraction=0.001)
    assert count_components(cleaned) == 2
    assert cleaned[42, 22] and not cleaned[6, 51] and not cleaned[95, 50]
    assert cleaned[10:90, 10:40].all() and cleaned[10:90, 60:90].all()


def test_specks_below_threshold_are_dropped_even_if_among_two_largest() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:90, 10:40] = True
    mask[50, 70] = True  # one pixel: 0.0001 of the image
    assert count_components(clean_mask(mask, min_fraction=0.002)) == 1


def test_empty_stays_empty() -> None:
    empty = clean_mask(np.zeros((8, 6), dtype=np.uint8))
    assert empty.shape == (8, 6) and empty.dtype == bool and not empty.any()


def test_sides_follow_component_centroids() -> None:
    from cxrseg.postprocess import LEFT, RIGHT, lung_sides

    mask = np.zeros((50, 100), dtype=bool)
    mask[5:45, 10:55] = True  # crosses the midline, but its centroid is on the image's left
    mask[5:45, 70:90] = True
    sides, count = lung_sides(mask)
    assert count == 2
    assert (sides[5:45, 10:55] == RIGHT).all()  # one colour for the whole part, past the midline too
    assert (sides[5:45, 70:90] == LEFT).all() and (sides[~mask] == 0).all()


def test_an_off_centre_film_is_split_at_its_own_midline() -> None:
    """A film pasted into the left of a wide figure: both lungs lie left of the image's middle column."""
    from cxrseg.postprocess import LEFT, RIGHT, lung_sides

    mask = np.zeros((60, 200), dtype=bool)
    mask[10:50, 10:30] = True  # the patient's right lung
    mask[10:50, 45:62] = True  # the patient's left lung, still in the image's left half
    sides, _ = lung_sides(mask)
    assert (sides[10:50, 10:30] == RIGHT).all() and (sides[10:50, 45:62] == LEFT).all()
    narrow = np.zeros((60, 600), dtype=bool)  # a small film at the left of a wide page: lungs 7 % of it apart
    narrow[10:50, 10:30] = narrow[10:50, 42:60] = True
    assert (lung_sides(narrow)[0][10:50, 10:30] == RIGHT).all() and (lung_sides(narrow)[0][10:50, 42:60] == LEFT).all()
    # one lung in two pieces (the other lung lost): no pair, so the image's middle decides, as before
    one = np.zeros((60, 200), dtype=bool)
    one[5:30, 20:50] = one[34:55, 22:48] = True
    assert (lung_sides(one)[0][one] == RIGHT).all()
    # a lung and a small piece far off: the piece does not move the midline
    speck = mask.copy()
    speck[:, 45:62] = False
    speck[20:24, 150:154] = True
    assert (lung_sides(speck)[0][10:50, 10:30] == RIGHT).all() and lung_sides(speck)[0][21, 151] == LEFT


def diagonal_pair() -> np.ndarray:
    """Two pixels touching only at a corner: one part under 8-connectivity, two under 4."""
    mask = np.zeros((6, 6), dtype=bool)
    mask[2, 2] = mask[3, 3] = True
    return mask


def test_diagonal_neighbours_are_one_part_everywhere() -> None:
    from cxrseg.postprocess import lung_sides

    assert count_components(diagonal_pair()) == 1
    assert clean_mask(diagonal_pair(), min_fraction=0, keep=1).sum() == 2
    assert lung_sides(diagonal_pair())[1] == 1


def test_one_part_and_the_area_limit_itself_are_kept() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:4, 2:4] = True  # 4 px = exactly 0.04 of the image
    cleaned = clean_mask(mask, min_fraction=0.04)
    assert cleaned.dtype == bool and np.array_equal(cleaned, mask)
    assert np.array_equal(clean_mask(mask), mask)  # the default limit, 0.2 % of the image, keeps it
    assert clean_mask(mask.astype(np.uint8) * 255, min_fraction=0.04).dtype == bool  # 0/255 bytes in, booleans out


def test_a_part_inside_another_parts_bounding_box_survives_its_fill() -> None:
    """The larger part (a block with a hole) lies inside the bounding box of the smaller one (an L)."""
    mask = np.zeros((22, 22), dtype=bool)
    mask[0, :20] = mask[:20, 19] = True  # the L: 39 px, box rows 0-19, columns 0-19
    mask[3:13, 3:13] = True  # the block: 100 px minus its hole
    mask[6:8, 6:8] = False
    cleaned = clean_mask(mask, min_fraction=0)
    expected = mask.copy()
    expected[6:8, 6:8] = True
    assert np.array_equal(cleaned, expected)


def test_a_part_centred_on_the_midline_goes_to_the_patients_left() -> None:
    """Centroid exactly on the midline column (width 9: column 4) counts as the image's right half."""
    from cxrseg.postprocess import LEFT, RIGHT, lung_sides

    mask = np.zeros((5, 9), dtype=bool)
    mask[1:4, 3:6] = True  # centroid column 4.0 = (9 - 1) / 2
    sides, _ = lung_sides(mask)
    assert sides.dtype == np.uint8 and (sides[mask] == LEFT).all()
    mask[:, :] = False
    mask[1:4, 3:5] = True  # centroid 3.5: the image's left
    assert (lung_sides(mask)[0][mask] == RIGHT).all()
    wide = np.zeros((5, 10), dtype=bool)
    wide[1:4, 4:5] = True  # column 4 < 4.5 = (10 - 1) / 2
    assert (lung_sides(wide)[0][wide] == RIGHT).all()
    wide[:, :] = False
    wide[1:4, 5:6] = True
    assert (lung_sides(wide)[0][wide] == LEFT).all()


@settings(max_examples=200, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.booleans()))
def test_fill_holes_matches_scipy(mask: np.ndarray) -> None:
    """clean_mask fills holes by labelling the background: the pixels must be scipy's, at the edges too."""
    np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


@settings(max_examples=300, deadline=None)
@given(
    arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.booleans()),
    st.integers(1, 4),
    st.booleans(),
)
def test_square_spread_matches_scipy(mask: np.ndarray, radius: int, grow: bool) -> None:
    """border_confidence's band: the pixels of scipy's 8-connected dilation and erosion, edges and tiny masks too."""
    scipy_op = ndimage.binary_dilation if grow else ndimage.binary_erosion
    np.testing.assert_array_equal(square_spread(mask, radius, grow), scipy_op(mask, EIGHT, radius))


def _sides_by_bounding_box(mask: np.ndarray) -> np.ndarray:
    """The reference rule: each part's centroid column, from its pixels, against the midline: halfway between
    the two largest parts' centroids when the smaller has a quarter of the larger's area and they share at
    most a quarter of the narrower one's columns, else the image's middle column."""
    labels, count = ndimage.label(mask, structure=EIGHT)
    parts = [np.nonzero(labels == label)[1] for label in range(1, count + 1)]
    midline = (mask.shape[1] - 1) / 2
    if count >= 2:
        second, first = sorted(parts, key=len)[-2:]
        shared = min(first.max(), second.max()) + 1 - max(first.min(), second.min())
        narrower = min(first.max() - first.min(), second.max() - second.min()) + 1
        if len(second) >= 0.25 * len(first) and shared <= 0.25 * narrower:
            midline = (first.mean() + second.mean()) / 2
    sides = np.zeros(mask.shape, dtype=np.uint8)
    for label, columns in enumerate(parts, start=1):
        sides[labels == label] = RIGHT if columns.mean() < midline else LEFT
    return sides


@settings(max_examples=200, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.booleans()))
def test_lung_sides_matches_the_centroid_rule(mask: np.ndarray) -> None:
    sides, count = lung_sides(mask)
    np.testing.assert_array_equal(sides, _sides_by_bounding_box(mask))
    assert count == count_components(mask)


@settings(max_examples=100, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.booleans()))
def test_clean_and_count_counts_the_parts_before_cleaning(mask: np.ndarray) -> None:
    cleaned, raw = clean_and_count(mask, min_fraction=0.01)
    np.testing.assert_array_equal(cleaned, clean_mask(mask, min_fraction=0.01))
    assert raw == count_components(mask)


def ghost_and_lungs() -> tuple[np.ndarray, np.ndarray]:
    """A probability map: a large diffuse ghost (0.75) above two smaller lungs the model is sure of (0.97),
    each lung with a soft rim (0.6) that belongs to it."""
    prob = np.zeros((120, 100), dtype=np.float32)
    prob[2:40, 5:95] = 0.75  # 3,420 px
    prob[50:110, 10:40] = 0.97  # 1,800 px
    prob[50:110, 60:85] = 0.97  # 1,500 px
    prob[49, 10:40] = prob[49, 60:85] = 0.6
    return prob > 0.5, prob


def test_keeping_by_confident_area_drops_a_large_diffuse_ghost() -> None:
    mask, prob = ghost_and_lungs()
    by_area = clean_mask(mask)
    assert by_area[20, 50] and not by_area[80, 70]  # the ghost kept, the smaller lung dropped
    kept = clean_mask(mask, prob=prob)
    assert not kept[2:40].any()
    assert np.array_equal(kept, mask & (np.arange(120)[:, None] >= 49))  # both lungs whole, soft rims included


def test_keeping_by_confident_area_falls_back_on_area_without_confident_pixels() -> None:
    mask, prob = ghost_and_lungs()
    prob = np.where(mask, 0.6, 0.0)  # nothing at or above 0.9 anywhere: the largest two, as before
    assert np.array_equal(clean_mask(mask, prob=prob), clean_mask(mask))


def test_keeping_by_confident_area_still_drops_parts_under_the_size_floor() -> None:
    """One lung, a diffuse ghost and a confident 4 px speck: the speck ranks second by confident area but is
    under the floor (0.2 % of the image), so the lung and the ghost are kept."""
    mask, prob = ghost_and_lungs()
    mask[50:110, 60:85] = False  # one lung only
    prob[50:110, 60:85] = 0
    mask[115:117, 0:2] = True
    prob[115:117, 0:2] = 1.0
    kept = clean_mask(mask, prob=prob)
    assert not kept[115:117, 0:2].any() and kept[80, 20] and kept[20, 50]


def test_the_engine_keeps_parts_as_inference_keep_by_says() -> None:
    mask, prob = ghost_and_lungs()
    geometry = fit_geometry(120, 100, 120)  # scale 1: the map goes back unchanged
    square = np.zeros((120, 120), dtype=np.float32)
    square[:, geometry.left : geometry.left + 100] = prob
    for keep_by, expected in (("area", clean_mask(mask)), ("confident_area", clean_mask(mask, prob=prob))):
        finished = finish(square, geometry, InferenceSettings(keep_by=keep_by))
        assert np.array_equal(finished.mask, expected), keep_by
    assert not np.array_equal(clean_mask(mask), clean_mask(mask, prob=prob))


def test_one_lung_takes_its_side_from_the_films_middle_when_given() -> None:
    """A film in the left 60 columns of a 100-column canvas: a lung at columns 35-50 lies left of the canvas'
    middle but in the film's right half: the patient's left lung."""
    mask = np.zeros((40, 100), dtype=bool)
    mask[5:35, 35:50] = True
    assert lung_sides(mask)[0][20, 40] == RIGHT  # by the canvas' middle column (49.5)
    assert lung_sides(mask, middle=29.5)[0][20, 40] == LEFT  # by the film's
