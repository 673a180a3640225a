"""Batched tensor augmentation: one random affine warp and intensity change per image, no vertical flip."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxrseg.config import AugmentSettings


def _uniform(n: int, spread: float, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * 2 - 1) * spread


def random_affine(n: int, cfg: AugmentSettings, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, 2, 3) affine matrices for F.affine_grid: rotation, isotropic scale, shift."""
    angle = _uniform(n, math.radians(cfg.rotate_degrees), generator)
    scale = 1 + _uniform(n, cfg.scale, generator)
    shift = _uniform(2 * n, 2 * cfg.shift, generator).view(n, 2)  # grid units span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    valid: torch.Tensor,
    cfg: AugmentSettings,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Warp images, masks and valid regions alike, then jitter intensity of the images.

    Shapes: (N, 1, S, S) each; images in [0, 1] (before normalisation), masks in {0, 1}.
    """
    n = images.shape[0]
    theta = random_affine(n, cfg, generator).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    stacked = torch.cat([images, masks, valid], dim=1)  # one grid_sample for all three: (N, 3, S, S)
    warped = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    images, masks, valid = warped[:, :1], (warped[:, 1:2] > 0.5).float(), (warped[:, 2:3] > 0.5).float()

    gamma = torch.exp(_uniform(n, cfg.gamma, generator)).view(n, 1, 1, 1).to(images)
    contrast = (1 + _uniform(n, cfg.contrast, generator)).view(n, 1, 1, 1).to(images)
    brightness = _uniform(n, cfg.brightness, generator).view(n, 1, 1, 1).to(images)
    images = images.clamp(0, 1) ** gamma
    mean = images.mean(dim=(2, 3), keepdim=True)
    images = ((images - mean) * contrast + mean + brightness).clamp(0, 1) * valid
    return images, masks, valid
