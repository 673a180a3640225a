"""The one preprocessing used by train, evaluate and predict: crop uniform margins, fit into a square, normalise,
and restore."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Box = tuple[int, int, int, int]  # (top, left, height, width) of a part of an image

MARGIN_TOLERANCE = 4 / 255  # a margin row or column spans at most this range of grey (a flat margin saved as JPEG)
MIN_CONTENT = 16  # px a side: a film is never cropped below this, a blank image is kept whole
MIN_CONTENT_SHARE = 0.1  # nor below this share of the image's side: a mark on a blank film is not a film


def content_box(image: np.ndarray, tolerance: float = MARGIN_TOLERANCE) -> Box:
    """(top, left, height, width) of `image` (float (H, W) in [0, 1]) inside its uniform margins.

    Rows, then columns, of one grey (range at most `tolerance` across what is left of them) are cropped off
    each edge in turn until none is left: a film pasted into a canvas, a figure's white frame, black padding.
    Margins of different greys on different sides go too. A margin with texture along its rows or columns
    (noise, a label, a shade running along the edge) stops the crop; one shaded only across them, each row
    or column one grey, goes. A blank image, or content under MIN_CONTENT px or MIN_CONTENT_SHARE of the
    image's side, whichever is more, is kept whole (see `min_content`).
    """
    height, width = image.shape
    top, bottom, left, right = 0, height, 0, width
    while True:
        before = (top, bottom, left, right)
        rows = np.ptp(image[top:bottom, left:right], axis=1) > tolerance
        if not rows.any():
            return 0, 0, height, width
        kept = np.flatnonzero(rows)
        top, bottom = top + int(kept[0]), top + int(kept[-1]) + 1
        columns = np.ptp(image[top:bottom, left:right], axis=0) > tolerance
        if not columns.any():  # e.g. a left-right ramp: every column is one grey
            return 0, 0, height, width
        kept = np.flatnonzero(columns)
        left, right = left + int(kept[0]), left + int(kept[-1]) + 1
        if (top, bottom, left, right) == before:
            break
    if bottom - top < min_content(height) or right - left < min_content(width):
        return 0, 0, height, width
    return top, left, bottom - top, right - left


def min_content(side: int) -> int:
    """The least content (px) along a side of `side` px that content_box crops to."""
    return min(side, max(MIN_CONTENT, math.ceil(MIN_CONTENT_SHARE * side)))


@dataclass(frozen=True)
class Geometry:
    """How an (height, width) image was cropped to `content`, scaled by `scale` and padded into a square model
    input. `content` is (top, left, height, width) of the part fitted; None for the whole image."""

    height: int
    width: int
    size: int
    scale: float
    top: int
    left: int
    inner_height: int
    inner_width: int
    content: Box | None = None

    @property
    def box(self) -> Box:
        """(top, left, height, width) of the part of the image that was fitted."""
        return self.content or (0, 0, self.height, self.width)


def fit_geometry(height: int, width: int, size: int, content: Box | None = None) -> Geometry:
    """Where an (height, width) image, or its `content` part, lands in a (size, size) model input."""
    if content == (0, 0, height, width):
        content = None
    inner_height, inner_width = (content[2], content[3]) if content else (height, width)
    scale = size / max(inner_height, inner_width)
    inner_h, inner_w = max(1, round(inner_height * scale)), max(1, round(inner_width * scale))
    top, left = (size - inner_h) // 2, (size - inner_w) // 2
    return Geometry(height, width, size, scale, top, left, inner_h, inner_w, content)


def fit_to_square(array: np.ndarray, size: int, content: Box | None = None) -> tuple[np.ndarray, Geometry]:
    """Aspect-preserving resize (antialiased bilinear) of a float (H, W) array, or of its `content` part (see
    content_box; a mask takes its image's), zero-padded to (size, size)."""
    geometry = fit_geometry(*array.shape, size, content)
    top, left, height, width = geometry.box
    array = array[top : top + height, left : left + width]
    resized = Image.fromarray(array.astype(np.float32), mode="F").resize(
        (geometry.inner_width, geometry.inner_height), Image.Resampling.BILINEAR
    )
    out = np.zeros((size, size), dtype=np.float32)
    out[geometry.top : geometry.top + geometry.inner_height, geometry.left : geometry.left + geometry.inner_width] = (
        resized
    )
    return out, geometry


def fit_film(gray: np.ndarray, size: int, trim: bool) -> tuple[np.ndarray, Geometry]:
    """fit_to_square of a decoded X-ray, its uniform margins cropped off first when `trim` (the model's
    preprocess.trim_border, or inference.trim_border); its masks follow with fit_to_square(mask, size,
    geometry.content)."""
    return fit_to_square(gray, size, content_box(gray) if trim else None)


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
    """Undo fit_to_square on a (S, S) probability map: crop the padding, resize to the fitted part's size and
    place it in an (height, width) map, zero in any cropped margin."""
    inner = probabilities[
        geometry.top : geometry.top + geometry.inner_height, geometry.left : geometry.left + geometry.inner_width
    ]
    top, left, height, width = geometry.box
    resized = F.interpolate(inner[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    if geometry.content is None:
        return resized
    full = torch.zeros((geometry.height, geometry.width), dtype=resized.dtype)
    full[top : top + height, left : left + width] = resized
    return full
