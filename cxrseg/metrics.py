"""Per-image overlap and surface-distance metrics from raw counts, at the mask's own resolution.

Overlap: Dice, IoU, precision and recall from the true/false positive and false negative pixel counts.

Surfaces, as in MONAI's `get_mask_edges`: a mask's surface is the mask XOR its binary erosion with the
4-connected cross, pixels outside the image counting as background. So a surface pixel is a foreground
pixel with a background 4-neighbour or on the image border.

Distances, as in MONAI's `get_surface_distance` (Euclidean): each surface pixel of one mask gets its
distance to the nearest surface pixel of the other, in pixels or, given `spacing=(row_mm, col_mm)`, in mm.
- HD95 (MONAI `compute_hausdorff_distance(percentile=95)`): the larger of the two directed 95th
  percentiles (prediction -> truth, truth -> prediction), each with linear interpolation.
- ASSD (MONAI `compute_average_surface_distance(symmetric=True)`): the mean over both directed
  distance sets together.

Empty-mask rule: when truth and prediction are both empty, Dice, IoU, precision and recall are 1 and
HD95 and ASSD are 0 (a correct "no lung"). When exactly one is empty, Dice and IoU are 0 and HD95 and
ASSD are NaN (no surface to measure), left out of summaries, whose `n` then counts fewer images.
Precision with an empty prediction is 1 (nothing claimed wrongly); recall with an empty truth is 1
(nothing missed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

METRICS = ("dice", "iou", "precision", "recall", "hd95", "assd")
DISTANCE_METRICS = ("hd95", "assd")

Spacing = Sequence[float] | None


@dataclass(frozen=True)
class Scores:
    """One image's scores; `hd95` and `assd` are in px, or in mm when scored with a spacing."""

    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float
    assd: float


def distance_unit(spacing: Spacing) -> str:
    """'mm' when a pixel spacing is known, else 'px'."""
    return "px" if spacing is None else "mm"


def _ratio(num: int, den: int) -> float:
    return 1.0 if den == 0 else num / den


def surface(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background 4-neighbour or on the image border (MONAI's mask edges)."""
    mask = np.asarray(mask, dtype=bool)
    return mask ^ ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing: Spacing = None) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances (prediction surface -> truth surface, truth surface -> prediction surface).

    Both masks must be non-empty. Shape: two 1-D arrays, one entry per surface pixel of the source mask.
    """
    pred_surface, truth_surface = surface(pred), surface(truth)
    sampling = None if spacing is None else tuple(float(s) for s in spacing)  # mm per row, per column
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=sampling)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)[truth_surface]
    return to_truth, to_pred


def _check_spacing(spacing: Spacing, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing {tuple(spacing)} must be {ndim} positive numbers (row_mm, col_mm)")
    return values


def distance_scores(pred: np.ndarray, truth: np.ndarray, spacing: Spacing = None) -> tuple[float, float]:
    """(HD95, ASSD) of boolean masks of the same shape, with the empty-mask rule of the module docstring."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    sampling = _check_spacing(spacing, pred.ndim)
    pred_any, truth_any = bool(pred.any()), bool(truth.any())
    if not pred_any and not truth_any:
        return 0.0, 0.0
    if not pred_any or not truth_any:
        return math.nan, math.nan
    to_truth, to_pred = surface_distances(pred, truth, sampling)
    hd = max(np.percentile(to_truth, 95), np.percentile(to_pred, 95))
    return float(hd), float(np.concatenate([to_truth, to_pred]).mean())


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Spacing = None) -> float:
    """Larger of the two directed 95th percentiles of surface distances; see the module docstring."""
    return distance_scores(pred, truth, spacing)[0]


def assd(pred: np.ndarray, truth: np.ndarray, spacing: Spacing = None) -> float:
    """Mean of both directed surface-distance sets together; see the module docstring."""
    return distance_scores(pred, truth, spacing)[1]


def score(
    pred: np.ndarray,
    truth: np.ndarray,
    with_distances: bool = True,
    spacing: Spacing = None,
    *,
    with_hd95: bool | None = None,
) -> Scores:
    """Scores of one boolean prediction against one boolean truth of the same shape.

    Args:
        pred: predicted mask, (H, W) bool.
        truth: reference mask, (H, W) bool.
        with_distances: compute HD95 and ASSD (NaN when False, which is faster).
        spacing: (row_mm, col_mm) pixel spacing for distances in mm; None for pixels.
        with_hd95: older name of `with_distances`; wins when given.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if with_hd95 is not None:
        with_distances = with_hd95
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    hd, asd = distance_scores(pred, truth, spacing) if with_distances else (math.nan, math.nan)
    return Scores(
        dice=_ratio(2 * tp, 2 * tp + fp + fn),
        iou=_ratio(tp, tp + fp + fn),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        hd95=hd,
        assd=asd,
    )


def summarize(rows: list[Scores]) -> dict[str, dict[str, float]]:
    """mean, sd, median and n per metric; NaN values (undefined distances) are left out, so n counts fewer."""
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
