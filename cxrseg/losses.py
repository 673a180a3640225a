"""Training loss: BCE-with-logits plus soft Dice, both over the real (non-padding) pixels only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1.0
) -> torch.Tensor:
    """1 - mean per-image soft Dice. (N, 1, H, W) logits, {0, 1} targets and valid weights -> scalar."""
    probs = torch.sigmoid(logits.float())
    if valid is not None:
        probs, targets = probs * valid, targets * valid
    dims = tuple(range(1, probs.ndim))
    intersection = (probs * targets).sum(dims)
    total = probs.sum(dims) + targets.sum(dims)
    return 1 - ((2 * intersection + eps) / (total + eps)).mean()


def segmentation_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    dice_weight: float = 1.0,
    hard_fraction: float = 1.0,
) -> torch.Tensor:
    """BCE-with-logits (mean over valid pixels) + dice_weight * soft Dice, in float32 whatever the autocast dtype.

    `valid` (N, 1, H, W) is 1 on the image and 0 on the padding that fits it into a square: padding is not scored.
    `hard_fraction` below 1 averages the BCE over only that share of the batch's scored pixels, the ones with
    the largest loss (online hard example mining): rare hard regions, such as gas under a thin diaphragm, are
    not outweighed by the many pixels the model already gets right.
    """
    count = valid.sum().clamp_min(1) if valid is not None else torch.tensor(float(targets.numel()))
    if hard_fraction < 1:
        per_pixel = F.binary_cross_entropy_with_logits(logits.float(), targets, weight=valid, reduction="none")
        k = max(1, min(per_pixel.numel(), round(hard_fraction * float(count))))
        bce = per_pixel.flatten().topk(k, sorted=False).values.mean()
    else:
        bce = F.binary_cross_entropy_with_logits(logits.float(), targets, weight=valid, reduction="sum") / count
    return bce + dice_weight * soft_dice_loss(logits, targets, valid) if dice_weight else bce
