"""Reading X-rays and masks from disk into plain numpy arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxrseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as an image ({exc}); replace or remove the file.") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to decode safely ({exc}); downscale it first.") from exc
    return ImageOps.exif_transpose(image) if image.format == "JPEG" else image


def pil_to_gray(image: Image.Image) -> np.ndarray:
    """Any PIL image -> float32 (H, W) in [0, 1]; 16-bit and float data keep their full precision."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16).astype(np.float32) / 65535.0
    if image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        return (array - low) / (high - low) if high > low else np.zeros_like(array)
    if image.mode != "L":
        image = image.convert("L")  # RGB, RGBA, P, LA, 1: luminance
    return np.asarray(image, dtype=np.float32) / 255.0


def read_image(path: Path) -> np.ndarray:
    """Read an X-ray as float32 (H, W) in [0, 1]: 8/16-bit grayscale, RGB(A), palette."""
    return pil_to_gray(_open(path))


def read_mask(path: Path) -> np.ndarray:
    """Read a mask as bool (H, W): lung where the grey value is above half range (>127 for 8-bit)."""
    return read_image(path) > 127.5 / 255.0


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format == "JPEG":
                orientation = image.getexif().get(0x0112, 1)
                if orientation in (5, 6, 7, 8):
                    width, height = height, width
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot be read as an image ({exc}); replace or remove the file.") from exc
    return height, width
