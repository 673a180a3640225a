"""Per-image metrics against a brute-force oracle, plus hand-checked values and the empty-mask rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrseg.metrics import METRICS, assd, distance_unit, hd95, score, summarize, surface

NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


# ----- oracle: plain loops and all-pairs distances, no scipy -----


def oracle_surface(mask: np.ndarray) -> list[tuple[int, int]]:
    """Foreground pixels with a 4-neighbour that is background or outside the image."""
    h, w = mask.shape
    points = []
    for r in range(h):
        for c in range(w):
            if mask[r, c] and any(
                not (0 <= r + dr < h and 0 <= c + dc < w) or not mask[r + dr, c + dc] for dr, dc in NEIGHBOURS
            ):
                points.append((r, c))
    return points


def oracle_directed(source: list, target: list, spacing: tuple[float, float]) -> np.ndarray:
    """For each source point, the Euclidean distance to its nearest target point (all pairs)."""
    a = np.array(source, dtype=np.float64) * spacing
    b = np.array(target, dtype=np.float64) * spacing
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)


def oracle_percentile(values: np.ndarray, q: float) -> float:
    """Linear interpolation between the order statistics around rank q/100 * (n - 1)."""
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def oracle_scores(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float]) -> dict[str, float]:
    tp = fp = fn = 0
    for p, t in zip(pred.ravel().tolist(), truth.ravel().tolist(), strict=True):
        tp += p and t
        fp += p and not t
        fn += t and not p
    out = {
        "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "iou": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
    }
    pred_points, truth_points = oracle_surface(pred), oracle_surface(truth)
    if not pred_points and not truth_points:
        return out | {"hd95": 0.0, "assd": 0.0}
    if not pred_points or not truth_points:
        return out | {"hd95": math.nan, "assd": math.nan}
    forward = oracle_directed(pred_points, truth_points, spacing)
    backward = oracle_directed(truth_points, pred_points, spacing)
    hd = max(oracle_percentile(forward, 95), oracle_percentile(backward, 95))
    mean = (forward.sum() + backward.sum()) / (len(forward) + len(backward))
    return out | {"hd95": hd, "assd": mean}


# ----- random masks: blobs with holes, several parts, thin lines, single pixels, noise, empty -----


def random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    kind = rng.integers(6)
    if kind == 0:  # empty
        return mask
    if kind == 1:  # noise, many parts and holes
        return rng.random(shape) < rng.uniform(0.1, 0.9)
    if kind == 2:  # single pixels
        count = rng.integers(1, 4)
        mask[rng.integers(h, size=count), rng.integers(w, size=count)] = True
        return mask
    rows, cols = np.mgrid[:h, :w]
    for _ in range(rng.integers(1, 4)):  # several parts
        r0, c0 = rng.integers(h), rng.integers(w)
        if kind == 3:  # rectangles
            mask[r0 : r0 + rng.integers(1, h + 1), c0 : c0 + rng.integers(1, w + 1)] = True
        elif kind == 4:  # ellipses
            a, b = rng.uniform(0.5, h / 2 + 1), rng.uniform(0.5, w / 2 + 1)
            mask |= ((rows - r0) / a) ** 2 + ((cols - c0) / b) ** 2 <= 1
        else:  # one-pixel-thin lines: a row, a column or a diagonal
            line = rng.integers(3)
            mask |= rows == r0 if line == 0 else cols == c0 if line == 1 else rows - cols == r0 - c0
    if kind != 5 and rng.random() < 0.5:  # holes
        mask[rng.integers(h), rng.integers(w)] = False
        hr, hc = rng.integers(h), rng.integers(w)
        mask[hr : hr + 2, hc : hc + 2] = False
    return mask


def random_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = (int(rng.integers(1, 19)), int(rng.integers(1, 19)))
    truth = random_mask(rng, shape)
    choice = rng.integers(3)
    if choice == 0:  # unrelated prediction
        return random_mask(rng, shape), truth
    pred = np.roll(truth, (rng.integers(-2, 3), rng.integers(-2, 3)), axis=(0, 1))
    if choice == 2:  # asymmetric: a near-copy plus or minus a separate part
        extra = random_mask(rng, shape)
        pred = pred | extra if rng.random() < 0.5 else pred & ~extra
    return pred, truth


@pytest.mark.parametrize("seed", range(4))
def test_every_metric_matches_the_brute_force_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for case in range(100):
        pred, truth = random_pair(rng)
        spacing = (1.0, 1.0) if case % 2 else (float(rng.uniform(0.2, 3)), float(rng.uniform(0.2, 3)))
        got = score(pred, truth, spacing=None if case % 2 else spacing)
        want = oracle_scores(pred, truth, spacing)
        for name in METRICS:
            value = getattr(got, name)
            assert value == pytest.approx(want[name], abs=1e-9, nan_ok=True), (seed, case, name, pred, truth)


def test_surface_matches_the_oracle_rule() -> None:
    rng = np.random.default_rng(7)
    for _ in range(100):
        mask = random_mask(rng, (int(rng.integers(1, 12)), int(rng.integers(1, 12))))
        assert sorted(zip(*np.nonzero(surface(mask)), strict=True)) == oracle_surface(mask)


# ----- hand-checked values -----


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
    assert score(truth, truth).dice == 1.0 and score(truth, truth).hd95 == 0.0 and score(truth, truth).assd == 0.0
    assert score(square(25, 25, 10), truth).dice == 0.0


def test_hd95_of_a_shift_is_the_shift() -> None:
    assert hd95(square(10, 13, 10), square(10, 10, 10)) == pytest.approx(3.0)


def test_hd95_is_the_larger_directed_percentile_not_the_pooled_one() -> None:
    truth = np.zeros((1, 11), dtype=bool)
    truth[0, 0] = True
    pred = truth.copy()
    pred[0, 10] = True  # prediction -> truth distances [0, 10], truth -> prediction [0]
    assert hd95(pred, truth) == pytest.approx(9.5)  # pooled [0, 0, 10] would give 9.0
    assert hd95(truth, pred) == pytest.approx(9.5)  # symmetric in its arguments
    assert assd(pred, truth) == pytest.approx(10 / 3)
    assert hd95(pred, truth, spacing=(2.0, 0.5)) == pytest.approx(4.75)  # columns are 0.5 mm apart
    assert assd(pred, truth, spacing=(2.0, 0.5)) == pytest.approx(5 / 3)


def test_pixels_on_the_image_border_are_surface() -> None:
    full = np.ones((4, 5), dtype=bool)
    expected = full.copy()
    expected[1:3, 1:4] = False
    assert (surface(full) == expected).all()


def test_empty_mask_rule() -> None:
    empty = np.zeros((20, 20), dtype=bool)
    both = score(empty, empty)
    assert (both.dice, both.iou, both.precision, both.recall, both.hd95, both.assd) == (1.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    missed = score(empty, square(2, 2, 5, (20, 20)))
    assert missed.dice == 0.0 and missed.recall == 0.0 and missed.precision == 1.0
    assert math.isnan(missed.hd95) and math.isnan(missed.assd)
    invented = score(square(2, 2, 5, (20, 20)), empty)
    assert invented.dice == 0.0 and invented.precision == 0.0 and invented.recall == 1.0
    assert math.isnan(invented.hd95) and math.isnan(invented.assd)


def test_distances_can_be_skipped_under_either_keyword() -> None:
    pred, truth = square(0, 5, 10), square(0, 0, 10)
    for skipped in (score(pred, truth, with_distances=False), score(pred, truth, with_hd95=False)):
        assert math.isnan(skipped.hd95) and math.isnan(skipped.assd) and skipped.dice == pytest.approx(0.5)


def test_summary_is_per_image_not_pooled() -> None:
    big, small = square(0, 0, 30), square(0, 0, 4)
    rows = [score(big, big), score(np.zeros_like(small), small)]  # 1.0 and 0.0
    summary = summarize(rows)
    assert summary["dice"]["mean"] == pytest.approx(0.5)  # pooled counts would give ~0.98
    assert summary["hd95"]["n"] == 1 and summary["assd"]["n"] == 1  # undefined distances left out, counted
    assert summary["dice"]["n"] == 2


def test_shape_mismatch_and_bad_spacing_are_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        score(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    for spacing in ((1.0,), (1.0, 0.0), (1.0, -2.0), (1.0, math.nan)):
        with pytest.raises(ValueError, match="spacing"):
            score(square(0, 0, 2, (4, 4)), square(1, 1, 2, (4, 4)), spacing=spacing)
    assert distance_unit(None) == "px" and distance_unit((0.5, 0.5)) == "mm"
