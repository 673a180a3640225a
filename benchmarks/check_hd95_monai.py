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
from pathlib import Path

import numpy as np
import torch
from monai.metrics import HausdorffDistanceMetric, SurfaceDistanceMetric

from cxrseg.checkpoint import BUNDLED_MODEL, load_checkpoint
from cxrseg.config import InferenceSettings
from cxrseg.dataset import find_pairs
from cxrseg.inference.engine import amp_dtype, forward_probabilities, probabilities_to_masks, resolve_device
from cxrseg.inference.evaluate import prefetched_batches
from cxrseg.metrics import score, surface_distances
from cxrseg.preprocess import valid_region

TOLERANCE_PX = 0.01


def predicted_masks(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, predicted mask, truth mask) per test pair, each at the truth's own resolution."""
    model, info = load_checkpoint(BUNDLED_MODEL)
    cfg = InferenceSettings()
    device = resolve_device(cfg.device)
    dtype = amp_dtype(device, info.settings.train.precision)
    model = model.to(device).eval()
    pairs = find_pairs(root / "test_image", root / "test_mask")
    out = []
    for index, batch in enumerate(prefetched_batches(pairs, info.settings.preprocess.image_size, cfg.batch_size)):
        images = torch.from_numpy(np.stack([b[0] for b in batch]))[:, None]
        valid = torch.from_numpy(np.stack([valid_region(b[2]) for b in batch]))[:, None]
        probs = forward_probabilities(model, images, valid, device, dtype, tta=cfg.tta)
        masks = probabilities_to_masks(probs, [b[2] for b in batch], cfg)
        names = [p.name for p in pairs[index * cfg.batch_size : index * cfg.batch_size + len(batch)]]
        out += [(n, m, b[1]) for n, (_, m), b in zip(names, masks, batch, strict=True)]
    return out


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
