"""Report pictures: small JPEG thumbnails and colour-blind-safe error maps (truth vs prediction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cxrseg.files import atomic_path
from cxrseg.inference.render import save_png, to_uint8

THUMB_SIDE = 256  # longest side of a gallery thumbnail: ~10-20 kB as JPEG
FULL_SIDE = 1024  # longest side of the full-size error map opened from a card
# Okabe-Ito colours, distinct for the common colour-vision deficiencies and on a grey X-ray
TP_COLOUR = (255, 255, 255)  # agreed lung: a light veil
FP_COLOUR = (230, 159, 0)  # false positive (predicted, not in truth): orange
FN_COLOUR = (86, 180, 233)  # false negative (in truth, missed): sky blue
LEGEND = (("true positive", TP_COLOUR), ("false positive", FP_COLOUR), ("false negative", FN_COLOUR))


def save_thumbnail(image: Image.Image, path: Path, side: int = THUMB_SIDE) -> tuple[int, int]:
    """Shrink `image` to a longest side of `side` (never enlarge), save it as JPEG atomically; (width, height)."""
    small = image.convert("RGB")
    small.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    with atomic_path(path) as tmp:
        small.save(tmp, format="JPEG", quality=82)
    return small.size


def thumbnail_of(source: Path, path: Path, side: int = THUMB_SIDE) -> tuple[int, int]:
    """Thumbnail of a picture file; reuses `path` when it is newer than `source`. Returns (width, height)."""
    if path.is_file() and path.stat().st_mtime >= source.stat().st_mtime:
        with Image.open(path) as done:
            return done.size
    with Image.open(source) as image:
        image.draft("RGB", (side, side))  # JPEG only: decode at a reduced scale
        return save_thumbnail(image, path, side)


def _shrink(array: np.ndarray, side: int, resample: Image.Resampling) -> np.ndarray:
    scale = side / max(array.shape)
    if scale >= 1:
        return array
    size = (max(1, round(array.shape[1] * scale)), max(1, round(array.shape[0] * scale)))
    mode_in = array.astype(np.uint8) * 255 if array.dtype == bool else array
    small = np.asarray(Image.fromarray(mode_in).resize(size, resample))
    return small > 127 if array.dtype == bool else small


def error_map(gray: np.ndarray, truth: np.ndarray, pred: np.ndarray, side: int = FULL_SIDE) -> Image.Image:
    """The X-ray with agreement and both kinds of error painted in, longest side at most `side`.

    Args:
        gray: (H, W) image, any dtype (shown with a 1-99 percentile window).
        truth, pred: (H, W) boolean masks at the image's resolution.
    """
    if not gray.shape == truth.shape == pred.shape:
        raise ValueError(f"image {gray.shape}, truth {truth.shape} and prediction {pred.shape} differ in shape")
    grey = _shrink(gray if gray.dtype == np.uint8 else to_uint8(gray), side, Image.Resampling.BILINEAR)
    truth, pred = _shrink(truth, side, Image.Resampling.NEAREST), _shrink(pred, side, Image.Resampling.NEAREST)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)  # (h, w, 3)
    for region, colour, alpha in (
        (truth & pred, TP_COLOUR, 0.25),
        (pred & ~truth, FP_COLOUR, 0.75),
        (truth & ~pred, FN_COLOUR, 0.75),
    ):
        rgb[region] = rgb[region] * (1 - alpha) + np.array(colour, dtype=np.float32) * alpha
    return Image.fromarray(np.rint(rgb).astype(np.uint8))


def save_error_map(gray: np.ndarray, truth: np.ndarray, pred: np.ndarray, full: Path, thumb: Path) -> tuple[int, int]:
    """Write the error map as PNG (`full`) and a JPEG thumbnail (`thumb`); the thumbnail's (width, height)."""
    picture = error_map(gray, truth, pred)
    save_png(picture, full)
    return save_thumbnail(picture, thumb)
