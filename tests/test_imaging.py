"""Decoding pictures: hostile headers, non-finite pixels, and a property test over random files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrseg.dataset import find_pairs, load_pairs
from cxrseg.errors import DataError
from cxrseg.imaging import image_size, read_image


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
