"""Decoding one X-ray file: DICOM via the optional pydicom (with pixel spacing), other formats via Pillow."""

from __future__ import annotations

import logging
import math
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrseg.errors import DataError
from cxrseg.imaging import MAX_PIXELS, check_pixels, stretch
from cxrseg.imaging import read_image as read_picture

DICOM_SUFFIXES = (".dcm", ".dicom")
INSTALL_HINT = "pip install 'cxrseg[dicom]'"


@dataclass(frozen=True)
class Xray:
    """An input decoded for the model: grey values in [0, 1] where air is dark, plus what the file says."""

    gray: np.ndarray  # (H, W) float32 in [0, 1]
    spacing: tuple[float, float] | None = None  # (row, column) millimetres per pixel
    spacing_source: str = ""  # "PixelSpacing" or "ImagerPixelSpacing" when known
    note: str = ""  # what was read past, e.g. an unusable DICOM window (the picture is still usable)


# how PNG, JPEG, TIFF and BMP files begin: a picture misnamed .dcm is read as the picture it is
PICTURE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")


def _head(path: Path) -> bytes:
    """The first 132 bytes of a regular file (b"" otherwise). Only regular files are opened: opening a FIFO
    would block until something writes to it."""
    if not path.is_file():
        return b""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)
    except OSError:
        return b""


def _has_preamble(head: bytes) -> bool:
    return len(head) == 132 and head[128:] == b"DICM"


def has_dicom_preamble(path: Path) -> bool:
    """True when bytes 128-131 read 'DICM' (a DICOM Part 10 file, whatever its name)."""
    return _has_preamble(_head(path))


DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: a CD's index, no picture
_MEDIA_CLASS_TAG = b"\x02\x00\x02\x00UI"  # (0002,0002) Media Storage SOP Class UID (the meta is explicit VR LE)


def is_dicomdir(path: Path) -> bool:
    """A DICOM CD/DVD export's index file: named DICOMDIR, or of the Media Storage Directory SOP Class."""
    if path.name.upper() == "DICOMDIR":
        return True
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024)
    except OSError:
        return False
    if not _has_preamble(head[:132]):
        return False
    at = head.find(_MEDIA_CLASS_TAG, 132)
    if at < 0 or at + 8 > len(head):
        return False
    length = struct.unpack("<H", head[at + 6 : at + 8])[0]
    return head[at + 8 : at + 8 + length].rstrip(b"\x00 ").decode("ascii", "replace") == DICOMDIR_CLASS


def is_dicom(path: Path) -> bool:
    """A DICOM preamble, or a .dcm/.dicom name on a file that does not begin like a PNG/JPEG/TIFF/BMP picture."""
    head = _head(path)
    return _has_preamble(head) or (path.suffix.lower() in DICOM_SUFFIXES and not head.startswith(PICTURE_SIGNATURES))


def read_xray(path: Path, max_pixels: int = MAX_PIXELS) -> Xray:
    """Decode a DICOM file (detected by its preamble or .dcm suffix) or a PNG/JPEG/TIFF/BMP image.

    Raises DataError with a one-line reason for empty, truncated, oversized or undecodable files.
    """
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found.") from exc
    except OSError as exc:  # e.g. a symlink loop
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); check or remove it.") from exc
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: not a regular file (a pipe, device or socket); remove it from the inputs.")
    if info.st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); export it again or remove it from the inputs.")
    xray = read_dicom(path, max_pixels) if is_dicom(path) else Xray(read_picture(path, max_pixels))
    if xray.gray.size and xray.gray.min() == xray.gray.max():
        raise DataError(
            f"{path}: blank image (every pixel has the same value); nothing to segment, export it again or remove it."
        )
    return xray


def _pydicom(path: Path) -> Any:
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401
    except ImportError as exc:
        raise DataError(f"{path}: is a DICOM file but pydicom is not installed; run {INSTALL_HINT}.") from exc
    # pydicom reports oddities it reads past as warnings and log records; cxrseg reports what fails, once
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    return pydicom


def _spacing(ds: Any) -> tuple[tuple[float, float] | None, str]:
    """(row, column) mm per pixel from PixelSpacing, else ImagerPixelSpacing (at the detector plane)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if row > 0 and col > 0 and math.isfinite(row) and math.isfinite(col):
            return (row, col), keyword
    return None, ""


def _decode(ds: Any, path: Path) -> np.ndarray:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", None) or str(syntax or "unknown")
    try:
        return np.asarray(ds.pixel_array)
    except (NotImplementedError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if syntax is not None and not getattr(syntax, "is_compressed", True):  # no decoder to install for these
            raise DataError(f"{path}: not a readable DICOM file ({reason}); export it again or remove it.") from exc
        raise DataError(
            f"{path}: cannot decode DICOM pixel data in transfer syntax '{name}' ({reason}); install a decoder "
            "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) or convert the file to uncompressed."
        ) from exc
    except (ValueError, AttributeError, KeyError, TypeError, OSError, EOFError) as exc:
        raise DataError(f"{path}: DICOM pixel data is corrupt or truncated ({exc}); export it again.") from exc


def read_dicom(path: Path, max_pixels: int = MAX_PIXELS) -> Xray:
    """Decode one DICOM frame: Rescale Slope/Intercept, VOI LUT or window, MONOCHROME1 inverted, min-max to [0, 1]."""
    pydicom = _pydicom(path)
    unreadable = (pydicom.errors.InvalidDicomError, pydicom.errors.BytesLengthException, OSError, ValueError)
    try:
        return _read_dicom(pydicom, path, max_pixels)
    except DataError:
        raise
    # elements are parsed lazily, so a corrupt one can fail at any access, not only in dcmread
    # NotImplementedError: pydicom's answer to an element with an unknown value representation
    except (*unreadable, EOFError, KeyError, TypeError, IndexError, AttributeError, struct.error, OverflowError,
            NotImplementedError) as exc:  # fmt: skip
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not a readable DICOM file ({reason}); export it again or remove it.") from exc


def _read_dicom(pydicom: Any, path: Path, max_pixels: int) -> Xray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path, force=True)
    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _without_pixels(ds, path)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_pixels(path, cols, rows, max_pixels)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; export a single frame.")
    pixels = _decode(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    note = ""
    try:
        if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # colour: pydicom returns RGB
            values = pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        elif pixels.ndim == 2:
            values, note = _windowed(np.asarray(apply_modality_lut(pixels, ds), np.float32), ds, path, apply_voi_lut)
        else:
            raise DataError(f"{path}: unexpected DICOM pixel array shape {pixels.shape}; export a single 2D frame.")
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: DICOM modality or VOI LUT is unusable ({exc}); export the image again.") from exc
    if not np.isfinite(values).all():
        raise DataError(f"{path}: DICOM pixel data holds NaN or infinite values; export it again.")
    gray = stretch(values)
    if photometric == "MONOCHROME1":  # MONOCHROME1: the lowest value is white; make air dark like MONOCHROME2
        gray = 1.0 - gray
    spacing, source = _spacing(ds)
    return Xray(gray.astype(np.float32, copy=False), spacing, source, note)


def _sop_class(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    for owner, keyword in ((ds, "SOPClassUID"), (meta, "MediaStorageSOPClassUID")):
        try:
            value = str(owner.get(keyword, "") or "").strip() if owner is not None else ""
        except Exception:  # a damaged element: as if absent
            value = ""
        if value:
            return value
    return ""


def _without_pixels(ds: Any, path: Path) -> DataError:
    """Why a file read as DICOM has no pixels: cut off (an image's header is there), not DICOM at all (no
    preamble, no SOP Class: random bytes, text, a zip named .dcm), or a DICOM object that holds no picture."""
    from pydicom.uid import UID

    sop_class = _sop_class(ds)
    if "Image Storage" in UID(sop_class).name or "Rows" in ds:
        return DataError(
            f"{path}: truncated or corrupt DICOM (an image header without its pixel data); export it again."
        )
    if not sop_class and not has_dicom_preamble(path):
        return DataError(f"{path}: not a DICOM file; check what it is, or remove it from the inputs.")
    return DataError(
        f"{path}: DICOM file without pixel data (a DICOMDIR, report or other non-image object); "
        "remove it from the inputs."
    )


def _windowed(values: np.ndarray, ds: Any, path: Path, apply_voi_lut: Any) -> tuple[np.ndarray, str]:
    """The VOI LUT or window applied, with a note when it is unusable and the full range is used instead: a
    width below 1, or a window wholly outside the pixel values (every pixel would get the same grey)."""
    window = f"(WindowCenter {ds.get('WindowCenter', '?')}, WindowWidth {ds.get('WindowWidth', '?')})"
    try:
        windowed = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float32)
    except ValueError as exc:  # pydicom: "Window Width must be greater than or equal to 1"
        if "Window" not in str(exc):
            raise
        return values, f"{path}: DICOM window {window} unusable ({exc}); the full pixel range was used instead."
    if values.size and windowed.min() == windowed.max() and values.min() < values.max():
        note = f"{path}: DICOM window {window} lies outside the pixel values; the full pixel range was used instead."
        return values, note
    return windowed, ""
