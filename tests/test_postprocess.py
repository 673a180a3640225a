"""Mask clean-up keeps two lungs, fills holes and drops specks."""

from __future__ import annotations

import numpy as np

from cxrseg.postprocess import clean_mask, count_components


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
    assert not clean_mask(np.zeros((8, 8), dtype=bool)).any()


def test_sides_follow_component_centroids() -> None:
    from cxrseg.postprocess import LEFT, RIGHT, lung_sides

    mask = np.zeros((50, 100), dtype=bool)
    mask[5:45, 10:55] = True  # crosses the midline, but its centroid is on the image's left
    mask[5:45, 70:90] = True
    sides, count = lung_sides(mask)
    assert count == 2
    assert (sides[5:45, 10:55] == RIGHT).all()  # one colour for the whole part, past the midline too
    assert (sides[5:45, 70:90] == LEFT).all() and (sides[~mask] == 0).all()
