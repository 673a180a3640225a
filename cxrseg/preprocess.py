"""The one preprocessing used by train, evaluate and predict: fit into a square, normalise, and restore."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class Geometry:
    """How an (height, width) image was scaled by `scale` and padded into a square model input."""

    height: int
    width: int
    size: int
    scale: float
    top: int
    left: int
    inner_height: int
    inner_width: int


def fit_geometry(height: int, width: int, size: int) -> Geometry:
    scale = size / max(height, width)
    inner_h, inner_w = max(1, round(height * scale)), max(1, round(width * scale))
    return Geometry(height, width, size, scale, (size - inner_h) // 2, (size - inner_w) // 2, inner_h, inner_w)


def fit_to_square(array: np.ndarray, size: int) -> tuple[np.ndarray, Geometry]:
    """Aspect-preserving resize (antialiased bilinear) of a float (H, W) array, zero-padded to (size, size)."""
    geometry = fit_geometry(*array.shape, size)
    resized = Image.fromarray(array.astype(np.float32), mode="F").resize(
        (geometry.inner_width, geometry.inner_height), Image.Resampling.BILINEAR
    )
    out = np.zeros((size, size), dtype=np.float32)
    out[geometry.top : geometry.top + geometry.inner_height, geometry.left : geometry.left + geometry.inner_width] = (
        resized
    )
    return out, geometry


def valid_region(geometry: Geometry) -> np.ndarray:
    """(size, size) float mask: 1 where the image is, 0 in the padding."""
    valid = np.zeros((geometry.size, geometry.size), dtype=np.float32)
    valid[geometry.top : geometry.top + geometry.inner_height, geometry.left : geometry.left + geometry.inner_width] = 1
    return valid


def normalize(images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-image z-score over the valid (non-padding) pixels; padding becomes 0. (N,1,S,S) -> (N,1,S,S)."""
    count = valid.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
    mean = (images * valid).sum(dim=(1, 2, 3), keepdim=True) / count
    var = (((images - mean) * valid) ** 2).sum(dim=(1, 2, 3), keepdim=True) / count
    return (images - mean) / var.sqrt().clamp_min(1e-3) * valid


def restore(probabilities: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Undo fit_to_square on a (S, S) probability map: crop the padding, resize to (height, width)."""
    inner = probabilities[
        geometry.top : geometry.top + geometry.inner_height, geometry.left : geometry.left + geometry.inner_width
    ]
    resized = F.interpolate(
        inner[None, None].float(), size=(geometry.height, geometry.width), mode="bilinear", align_corners=False
    )
    return resized[0, 0]
