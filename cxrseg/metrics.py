"""Per-image overlap and distance metrics from raw counts, at the mask's own resolution.

Empty-mask rule: when truth and prediction are both empty, Dice, IoU, precision and recall are 1 and
HD95 is 0 (a correct "no lung"). When exactly one is empty, Dice and IoU are 0 and HD95 is NaN (no
surface to measure), left out of HD95 summaries and counted separately. Precision with an empty
prediction is 1 (nothing claimed wrongly); recall with an empty truth is 1 (nothing missed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

METRICS = ("dice", "iou", "precision", "recall", "hd95")


@dataclass(frozen=True)
class Scores:
    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float


def _ratio(num: int, den: int) -> float:
    return 1.0 if den == 0 else num / den


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """95th percentile of symmetric surface distances in pixels; NaN when exactly one mask is empty."""
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return math.nan
    pred_surface, truth_surface = _surface(pred), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~truth_surface)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface)[truth_surface]
    return float(np.percentile(np.concatenate([to_truth, to_pred]), 95))


def score(pred: np.ndarray, truth: np.ndarray, with_hd95: bool = True) -> Scores:
    """Scores of one boolean prediction against one boolean truth of the same shape."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return Scores(
        dice=_ratio(2 * tp, 2 * tp + fp + fn),
        iou=_ratio(tp, tp + fp + fn),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        hd95=hd95(pred, truth) if with_hd95 else math.nan,
    )


def summarize(rows: list[Scores]) -> dict[str, dict[str, float]]:
    """mean, sd, median and n per metric; NaN values (undefined HD95) are left out and counted."""
    summary = {}
    for name in METRICS:
        values = np.array([getattr(r, name) for r in rows], dtype=np.float64)
        finite = values[~np.isnan(values)]
        summary[name] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0 if finite.size else math.nan,
            "median": float(np.median(finite)) if finite.size else math.nan,
            "n": int(finite.size),
        }
    return summary
