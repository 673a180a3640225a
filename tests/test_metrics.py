"""Per-image metrics from counts, with the written empty-mask rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrseg.metrics import hd95, score, summarize


def square(top: int, left: int, side: int, shape: tuple[int, int] = (40, 40)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_known_overlap_values() -> None:
    truth = square(0, 0, 10)  # 100 px
    pred = square(0, 5, 10)  # 100 px, 50 overlap
    s = score(pred, truth)
    assert s.dice == pytest.approx(2 * 50 / 200)
    assert s.iou == pytest.approx(50 / 150)
    assert s.precision == pytest.approx(0.5) and s.recall == pytest.approx(0.5)


def test_perfect_and_disjoint() -> None:
    truth = square(5, 5, 10)
    assert score(truth, truth).dice == 1.0 and score(truth, truth).hd95 == 0.0
    assert score(square(25, 25, 10), truth).dice == 0.0


def test_hd95_of_a_shift_is_the_shift() -> None:
    assert hd95(square(10, 13, 10), square(10, 10, 10)) == pytest.approx(3.0)


def test_empty_mask_rule() -> None:
    empty = np.zeros((20, 20), dtype=bool)
    both = score(empty, empty)
    assert (both.dice, both.iou, both.precision, both.recall, both.hd95) == (1.0, 1.0, 1.0, 1.0, 0.0)
    missed = score(empty, square(2, 2, 5, (20, 20)))
    assert missed.dice == 0.0 and missed.recall == 0.0 and missed.precision == 1.0 and math.isnan(missed.hd95)
    invented = score(square(2, 2, 5, (20, 20)), empty)
    assert invented.dice == 0.0 and invented.precision == 0.0 and invented.recall == 1.0


def test_summary_is_per_image_not_pooled() -> None:
    big, small = square(0, 0, 30), square(0, 0, 4)
    rows = [score(big, big), score(np.zeros_like(small), small)]  # 1.0 and 0.0
    summary = summarize(rows)
    assert summary["dice"]["mean"] == pytest.approx(0.5)  # pooled counts would give ~0.98
    assert summary["hd95"]["n"] == 1  # the undefined HD95 is left out and counted


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        score(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
