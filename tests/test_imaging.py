"""Decoding pictures: hostile headers, non-finite pixels, and a property test over random files."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cxrseg import imaging
from cxrseg.dataset import find_pairs, load_pairs
from cxrseg.errors import DataError
from cxrseg.imaging import image_size, read_image, read_mask


def png_header(width: int, height: int, mode: int = 0, depth: int = 8, body: bytes = b"") -> bytes:
    """A PNG whose IHDR claims `width` x `height` (grey 8-bit by default) and whose IDAT holds `body`."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, mode, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def test_item9_decompression_bomb_in_training_data_is_one_data_error(tmp_path: Path) -> None:
    for folder in ("image", "mask"):
        (tmp_path / folder).mkdir()
        Image.new("L", (8, 8)).save(tmp_path / folder / "ok.png")
        (tmp_path / folder / "bomb.png").write_bytes(png_header(20_000, 20_000))  # 400 Mpx: over 2x PIL's limit
    with pytest.raises(DataError, match="bomb.png: image too large to decode safely") as caught:
        image_size(tmp_path / "image" / "bomb.png")
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match="bomb.png"):
        load_pairs(find_pairs(tmp_path / "image", tmp_path / "mask"), 32, workers=1)


def test_item10_float_tiff_with_nan_is_refused(tmp_path: Path) -> None:
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    values[3, 3] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="nan.tif: image holds NaN or infinite values"):
        read_image(tmp_path / "nan.tif")
    values[3, 3] = 0.5
    Image.fromarray(values, mode="F").save(tmp_path / "ok.tif")
    assert read_image(tmp_path / "ok.tif").max() == 1.0


# how each EXIF orientation stores an upright picture (the inverse of the transpose that shows it upright)
STORED = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    7: Image.Transpose.TRANSVERSE,
}


def stored_with_orientation(path: Path, upright: np.ndarray, orientation: int, **options) -> None:
    """Save `upright` (uint8 or uint16) turned as a camera would store it, with the EXIF orientation that turns
    it back."""
    picture = Image.fromarray(upright)
    exif = Image.Exif()
    exif[0x0112] = orientation
    picture.transpose(STORED[orientation]).save(path, exif=exif.tobytes(), **options)


FORMATS = [
    (".png", "L", None),
    (".png", "I;16", None),
    (".tif", "L", None),
    (".tif", "I;16", "tiff_lzw"),
    (".jpg", "L", None),
]
# an uncompressed TIFF stored at 90 degrees is refused instead (test_a_tiff_stored_rotated_is_refused_not_scrambled)
UPRIGHT_CASES = [
    (orientation, *form)
    for orientation in sorted(STORED)
    for form in FORMATS
    if not (form == (".tif", "L", None) and orientation in (5, 6, 7, 8))
]


@pytest.mark.parametrize(("orientation", "suffix", "mode", "compression"), UPRIGHT_CASES)
def test_exif_orientation_shows_every_format_upright(
    tmp_path: Path, orientation: int, suffix: str, mode: str, compression: str | None
) -> None:
    # an asymmetric picture: a bright block in the top-left corner of a 40x60 (H x W) gradient
    upright = np.tile(np.arange(0, 180, 3), (40, 1))
    upright[:10, :15] = 255
    scale = 257 if mode == "I;16" else 1
    path = tmp_path / f"film{suffix}"
    options = {"compression": compression} if compression else {}
    pixels = (upright * scale).astype(np.uint16 if scale > 1 else np.uint8)
    stored_with_orientation(path, pixels, orientation, **options)
    decoded = read_image(path)
    assert image_size(path) == decoded.shape == (40, 60)
    if suffix == ".jpg":  # lossy: the bright corner block is where the picture puts it, the rest close
        assert decoded[:10, :15].mean() > 0.9 and decoded[30:, 45:].mean() < 0.8
        assert np.abs(decoded - upright / 255).mean() < 0.02
    else:
        np.testing.assert_allclose(decoded, upright / 255, atol=1e-6)


def test_a_tiff_stored_rotated_is_refused_not_scrambled(tmp_path: Path) -> None:
    path = tmp_path / "film.tif"
    stored_with_orientation(path, np.tile(np.arange(0, 180, 3, dtype=np.uint8), (40, 1)), 6)
    with pytest.raises(DataError, match=r"film\.tif: an uncompressed TIFF stored rotated \(EXIF orientation 6\)"):
        read_image(path)


def test_a_tiff_whose_strip_offsets_are_text_is_a_one_line_error(tmp_path: Path) -> None:
    """Found by the decode fuzzer: a TIFF whose StripOffsets tag is typed ASCII made Pillow raise TypeError,
    which escaped as a traceback instead of the one-line error every unreadable file gets."""
    entries = [(0x100, 4, 1, 12), (0x101, 4, 1, 16), (0x102, 3, 1, 32), (0x103, 3, 1, 1), (0x106, 3, 1, 1)]
    entries += [(0x111, 2, 1, 0x86), (0x116, 4, 1, 16), (0x117, 4, 1, 0x300), (0x11C, 3, 1, 1), (0x153, 3, 1, 3)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *entry) for entry in entries)
    path = tmp_path / "strip.tiff"
    path.write_bytes(b"II*\x00\x08\x00\x00\x00" + ifd + b"\x00" * 4 + b"\x00" * 0x300)
    with pytest.raises(DataError, match="cannot be read as an image") as caught:
        read_image(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("error", [TypeError, IndexError, KeyError, struct.error, ZeroDivisionError])
@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_what_pillow_raises_on_malformed_data_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[Exception], reader: Callable[[Path], object]
) -> None:
    path = tmp_path / "a.png"
    Image.new("L", (8, 8), 100).save(path)

    def malformed(self: ImageFile.ImageFile) -> None:
        raise error("bad table")

    monkeypatch.setattr(ImageFile.ImageFile, "load", malformed)
    with pytest.raises(DataError, match="cannot be read as an image"):
        reader(path)


def test_a_bug_in_our_own_code_is_not_reported_as_a_corrupt_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.png"
    Image.new("L", (8, 8), 100).save(path)

    def broken(*args: object) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(imaging, "check_pixels", broken)
    with pytest.raises(TypeError, match="a bug"):
        read_image(path)


@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_an_image_mode_pillow_cannot_make_grey_is_a_one_line_error(
    tmp_path: Path, reader: Callable[[Path], object]
) -> None:
    path = tmp_path / "lab.tiff"
    Image.new("LAB", (8, 8), (50, 0, 0)).save(path)
    with pytest.raises(DataError, match="image mode LAB cannot be turned into grey") as caught:
        reader(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
