"""Check cxrseg's HD95 and ASSD against MONAI's on the bundled model's predictions of a test split.

Needs MONAI, a development tool only (not a cxrseg dependency): `pip install monai`.

    python benchmarks/check_hd95_monai.py [DATA_ROOT]

DATA_ROOT holds test_image/ and test_mask/ (default data/cxr-lungs). Each final mask is predicted at its
truth's resolution exactly as `cxrseg evaluate` does, then scored by cxrseg (`metrics.score`) and by
MONAI's `HausdorffDistanceMetric(percentile=95)` and `SurfaceDistanceMetric(symmetric=True)` on the
same masks. Prints the mean of each and the largest per-image difference; HD95 should agree within
0.01 px on every image. Images where a mask is empty are counted and left out (the two libraries
report different placeholders there).
"""

from __future__ import annotations

import math
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from monai.metrics import HausdorffDistanceMetric, SurfaceDistanceMetric

from cxrseg.checkpoint import BUNDLED_MODEL
from cxrseg.config import InferenceSettings
from cxrseg.dataset import find_pairs
from cxrseg.inference.engine import finish, load_engine
from cxrseg.inference.evaluate import load_pair
from cxrseg.inference.pipeline import run_pipeline
from cxrseg.metrics import score, surface_distances

TOLERANCE_PX = 0.01


def _masks(pair, loaded, prob, cfg: InferenceSettings) -> tuple[str, np.ndarray, np.ndarray]:
    return pair.name, finish(prob, loaded.fitted.geometry, cfg).mask, loaded.truth


def predicted_masks(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, predicted mask, truth mask) per test pair, each at the truth's own resolution."""
    cfg = InferenceSettings()
    engine, _ = load_engine(BUNDLED_MODEL, cfg)
    pairs = find_pairs(root / "test_image", root / "test_mask")
    decode, keep = partial(load_pair, size=engine.size, trim=engine.trim), partial(_masks, cfg=cfg)
    return list(run_pipeline(engine, pairs, decode, keep, workers=0))


def monai_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """MONAI's HD95 and symmetric ASSD of one pair of boolean (H, W) masks, on the CPU."""
    y_pred = torch.from_numpy(pred)[None, None].float()  # (B=1, C=1, H, W)
    y = torch.from_numpy(truth)[None, None].float()
    hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    asd = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")
    return float(hd(y_pred, y).item()), float(asd(y_pred, y).item())


def pooled_hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """HD95 as cxrseg computed it before (one 95th percentile over both directions pooled)."""
    return float(np.percentile(np.concatenate(surface_distances(pred, truth)), 95))


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("data/cxr-lungs")
    rows, skipped = [], 0
    for name, pred, truth in predicted_masks(root):
        if not pred.any() or not truth.any():
            skipped += 1
            continue
        ours = score(pred, truth)
        rows.append((name, ours.hd95, ours.assd, *monai_scores(pred, truth), pooled_hd95(pred, truth)))
    table = np.array([r[1:] for r in rows])  # columns: cxrseg hd95, assd; monai hd95, assd; pooled hd95
    print(f"{len(rows)} test pairs scored, {skipped} left out for an empty mask; distances in px")
    print(f"{'metric':<8} {'cxrseg mean':>12} {'MONAI mean':>12} {'max |diff|':>12}  worst image")
    for label, ours, theirs in (("HD95", 0, 2), ("ASSD", 1, 3)):
        diff = np.abs(table[:, ours] - table[:, theirs])
        worst = rows[int(diff.argmax())][0]
        means = f"{table[:, ours].mean():>12.4f} {table[:, theirs].mean():>12.4f}"
        print(f"{label:<8} {means} {diff.max():>12.6f}  {worst}")
    print(f"pooled HD95 (cxrseg's former definition): mean {table[:, 4].mean():.4f}")
    hd_diff = float(np.abs(table[:, 0] - table[:, 2]).max())
    ok = not math.isnan(hd_diff) and hd_diff <= TOLERANCE_PX
    print(f"HD95 within {TOLERANCE_PX} px of MONAI on every image: {'yes' if ok else 'NO'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
