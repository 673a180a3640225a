"""Training loss: BCE-with-logits plus soft Dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean per-image soft Dice. (N, 1, H, W) logits and {0, 1} targets -> scalar."""
    probs = torch.sigmoid(logits.float())
    dims = tuple(range(1, probs.ndim))
    intersection = (probs * targets).sum(dims)
    total = probs.sum(dims) + targets.sum(dims)
    return 1 - ((2 * intersection + eps) / (total + eps)).mean()


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """BCE-with-logits + dice_weight * soft Dice, computed in float32 whatever the autocast dtype."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets)
    return bce + dice_weight * soft_dice_loss(logits, targets) if dice_weight else bce
