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
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None, dice_weight: float = 1.0
) -> torch.Tensor:
    """BCE-with-logits (mean over valid pixels) + dice_weight * soft Dice, in float32 whatever the autocast dtype.

    `valid` (N, 1, H, W) is 1 on the image and 0 on the padding that fits it into a square: padding is not scored.
    """
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets, weight=valid, reduction="sum")
    bce = bce / (valid.sum().clamp_min(1) if valid is not None else targets.numel())
    return bce + dice_weight * soft_dice_loss(logits, targets, valid) if dice_weight else bce
