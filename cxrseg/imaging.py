"""Reading X-rays and masks (PNG, JPEG, TIFF, BMP) from disk into plain numpy arrays."""

from __future__ import annotations

import struct
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_PIXELS = 100_000_000  # 100 megapixels: larger inputs are refused before decoding (no decompression bomb)
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
FLOAT_MODES = ("I", "F")
_OPEN_LOCK = threading.Lock()


def stretch(array: np.ndarray) -> np.ndarray:
    """Min-max stretch to [0, 1]; a constant image becomes all zeros."""
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def grey_window(gray: np.ndarray, low: float = 1, high: float = 99, grid: int = 65536) -> tuple[float, float]:
    """The `low` and `high` percentiles of an image, read off a regular grid of at most ~`grid` pixels.

    The same window to the eye as all pixels give, at a fraction of the cost of sorting a large film;
    images under 4 x `grid` pixels are read whole.
    """
    if not gray.size:
        return 0.0, 1.0
    step = max(1, int((gray.size / grid) ** 0.5))
    bottom, top = np.percentile(gray[::step, ::step], [low, high])
    return float(bottom), float(top)


def check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse an image larger than `max_pixels` before its pixels are decoded (no decompression bomb)."""
    if width * height > max_pixels:
        raise DataError(
            f"{path}: {width}x{height} pixels exceeds the limit of {max_pixels / 1e6:g} megapixels; "
            "downscale the image first."
        )


def pil_to_gray(image: Image.Image) -> np.ndarray:
    """Any PIL image -> float32 (H, W) in [0, 1]. 16-bit, integer and float data are stretched from their
    own minimum to maximum (12-bit data in 16-bit files would otherwise use 6 % of the range)."""
    if image.mode in SIXTEEN_BIT or image.mode in FLOAT_MODES:
        return stretch(np.asarray(image, dtype=np.float32))
    if image.mode != "L":
        image = image.convert("L")  # RGB, RGBA, P, LA, 1: luminance
    return np.asarray(image, dtype=np.float32) / 255.0


# EXIF orientation -> the transpose that shows the picture upright, as viewers and browsers do (ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8, 1 = as stored) of an opened, not yet decoded picture of any format.

    A PNG's eXIf chunk counts when it precedes the pixel data (where the PNG specification puts it): asking
    Pillow for a later one would decode the whole image, and the header alone must give the same answer.
    """
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block: show the picture as stored
        return 1
    return value if value in _UPRIGHT else 1


# what Pillow's decoders raise on malformed data besides OSError and ValueError: a TIFF tag of the wrong type
# (strip offsets stored as text: TypeError), counts that point past a table (IndexError, KeyError, struct.error)
MALFORMED = (TypeError, IndexError, KeyError, struct.error, ZeroDivisionError)


def _decode(image: Image.Image) -> None:
    """image.load(), with Pillow's errors on malformed data turned into OSError; caught around this call alone,
    so that a bug in cxrseg's own code is never reported as a corrupt file."""
    try:
        image.load()
    except MALFORMED as exc:
        raise OSError(f"malformed image data, {type(exc).__name__}: {exc}") from exc


def load_picture(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a PNG/JPEG/TIFF/BMP (EXIF orientation applied); the size is checked from the header first.

    Raises DataError with a one-line reason for missing, empty, truncated, oversized or undecodable files.
    """
    try:
        with _OPEN_LOCK, warnings.catch_warnings():  # catch_warnings is not thread-safe; open only reads a header
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            warnings.simplefilter("ignore", UserWarning)  # corrupt TIFF/EXIF tags: decoding decides below
            image = Image.open(path)
            orientation = _orientation(image)
        with image:
            check_pixels(path, *image.size, max_pixels)
            if image.format == "TIFF":  # Pillow's TIFF loader applies the orientation itself
                # ... and, for these in an uncompressed TIFF, returned scrambled pixels (Pillow 13.0)
                if orientation in (5, 6, 7, 8) and image.info.get("compression", "raw") == "raw":
                    raise DataError(
                        f"{path}: an uncompressed TIFF stored rotated (EXIF orientation {orientation}) is not "
                        "decoded reliably; save it upright, compressed (LZW) or as PNG and try again."
                    )
                orientation = 1
            _decode(image)
            return image.transpose(_UPRIGHT[orientation]) if orientation != 1 else image.copy()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found.") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to decode safely ({exc}); downscale it first.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(
            f"{path}: cannot be read as an image ({exc}); it is truncated or not a PNG/JPEG/TIFF/BMP/DICOM file. "
            "Replace or remove it."
        ) from exc


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an X-ray as float32 (H, W) in [0, 1]: 8/16-bit grayscale, RGB(A), palette, float TIFF."""
    image = load_picture(path, max_pixels)
    if image.mode == "F" and not np.isfinite(np.asarray(image)).all():  # checked before stretching hides them
        raise DataError(f"{path}: image holds NaN or infinite values; export it again.")
    try:
        return pil_to_gray(image)
    except (ValueError, OSError) as exc:  # a mode Pillow cannot turn into grey (LAB, La, ...)
        raise _unsupported_mode(path, image, exc) from exc


def _unsupported_mode(path: Path, image: Image.Image, exc: BaseException) -> DataError:
    return DataError(
        f"{path}: its image mode {image.mode} cannot be turned into grey ({exc}); save it as a grey or RGB "
        "PNG/TIFF and try again."
    )


LABEL_MAX = 10  # a mask whose largest value is at most this is a label map (0/1, or a number per lung)
MAX_LEVELS = 3  # at most this many flat non-zero levels (greys or colours) can be a label map
LEVEL_FLOOR = 1 / 8  # ... none darker than this share of the brightest (else a noise floor)
SIDE = 0.1  # ... and, when there are several, each centred more than this share of the width off the middle


def _mask_planes(path: Path, image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grey, codes, brightness) of a mask: `grey` is what a drawing is cut on (colour by its luminance, as
    ever; a mask whose colours are all black by its alpha), `codes` tells its flat levels apart (the grey, or
    the colour as one number) and `brightness` is each pixel's brightest channel."""
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # the palette's colours, not its indices (index 0 need not be black)
    if image.mode in ("RGB", "RGBA", "LA"):
        channels = np.asarray(image)
        colours = channels[..., :-1] if image.mode != "RGB" else channels
        if image.mode != "RGB" and not colours.any():  # drawn in the alpha channel alone
            alpha = channels[..., -1]
            return alpha, alpha, alpha
        grey = np.asarray(image.convert("L"))
        if image.mode == "LA":
            return grey, grey, grey
        codes = (colours[..., 0].astype(np.int32) << 16) | (colours[..., 1].astype(np.int32) << 8) | colours[..., 2]
        return grey, codes, colours.max(axis=2)
    if image.mode not in SIXTEEN_BIT and image.mode not in FLOAT_MODES and image.mode != "L":
        try:
            image = image.convert("L")
        except (ValueError, OSError) as exc:
            raise _unsupported_mode(path, image, exc) from exc
    grey = np.asarray(image)
    return grey, grey, grey


def _is_label_map(codes: np.ndarray, brightness: np.ndarray) -> bool:
    """A few flat levels, one per lung (0/127/255, or a blue lung and a red one), rather than a drawing with
    soft or JPEG edges (many levels), a faint noise floor (a level under LEVEL_FLOOR of the brightest), or a
    lung mask with another structure in its own level (the heart, centred: not off to one side)."""
    levels = np.unique(codes[codes > 0])
    if not 0 < len(levels) <= MAX_LEVELS:
        return False
    top = float(brightness.max())
    width = codes.shape[1]
    for level in levels:
        at = codes == level
        if float(brightness[at].max()) < top * LEVEL_FLOOR:
            return False
        if len(levels) > 1 and abs(np.nonzero(at)[1].mean() / width - 0.5) <= SIDE:
            return False
    return True


def read_mask(path: Path) -> np.ndarray:
    """Read a mask as bool (H, W). Lung is > 0.5 for masks in [0, 1] (0/1, or soft float masks), any label
    of a label map (largest value 2 to LABEL_MAX: 1 and 2 for the two lungs; or up to MAX_LEVELS flat levels,
    one per lung: 0/127/255, a blue lung and a red one), else above half the largest value: > 127.5 for 0/255
    masks (JPEG grey edges drop out), > 32767.5 for 0/65535, > 2047.5 for 12-bit 0/4095, > 38 for a red mask
    (grey 76). A mask whose colours are all black is read by its alpha channel."""
    grey, codes, brightness = _mask_planes(path, load_picture(path))
    top = float(grey.max()) if grey.size else 0.0
    if top <= 1:  # 0/1, or a soft float mask in [0, 1]
        return grey > 0.5
    if top <= LABEL_MAX or _is_label_map(codes, brightness):
        return codes > 0
    return grey > top / 2


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding pixels (EXIF rotation taken into account)."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # corrupt TIFF/EXIF tags: read_image decides
            image = Image.open(path)
            orientation = _orientation(image)
        with image:
            width, height = image.size
            if image.format != "TIFF" and orientation in (5, 6, 7, 8):  # Pillow gives a TIFF's upright size
                width, height = height, width
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to decode safely ({exc}); downscale it first.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read as an image ({exc}); replace or remove the file.") from exc
    return height, width
