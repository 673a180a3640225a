"""Pictures: validation previews and mask overlays, saved atomically as PNG."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

LEFT_COLOUR = (255, 80, 60)  # patient's left lung (image right in a PA view)
RIGHT_COLOUR = (40, 200, 255)  # patient's right lung (image left)


def save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.tmp", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_uint8(gray: np.ndarray) -> np.ndarray:
    """Float image -> uint8 with a 1-99 percentile window, so any bit depth displays well."""
    low, high = np.percentile(gray, [1, 99]) if gray.size else (0.0, 1.0)
    scaled = (gray - low) / (high - low) if high > low else np.zeros_like(gray)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def overlay(gray: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> Image.Image:
    """X-ray with each lung tinted and outlined: image-left half blue (patient right), image-right red."""
    base = np.repeat(to_uint8(gray)[..., None], 3, axis=2).astype(np.float32)
    width = mask.shape[1]
    columns = np.arange(width)[None, :]
    outline = mask & ~ndimage.binary_erosion(mask, iterations=max(1, width // 256))
    for colour, side in ((RIGHT_COLOUR, columns < width / 2), (LEFT_COLOUR, columns >= width / 2)):
        region = mask & side
        tint = np.array(colour, dtype=np.float32)
        base[region] = (1 - alpha) * base[region] + alpha * tint
        base[outline & side] = tint
    return Image.fromarray(base.astype(np.uint8))


def preview_strip(gray: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> Image.Image:
    """One row: image | truth | prediction (all the same size)."""
    panels = [to_uint8(gray), truth.astype(np.uint8) * 255, pred.astype(np.uint8) * 255]
    return Image.fromarray(np.concatenate(panels, axis=1))


def preview_sheet(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Image.Image:
    return Image.fromarray(np.concatenate([np.asarray(preview_strip(*row)) for row in rows], axis=0))
