"""Property tests: decoding random bytes, mutated PNG/TIFF/BMP/JPEG/DICOM files and odd file names always ends
in an X-ray or a typed error, in bounded time and memory."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxrseg.dicom import read_xray
from cxrseg.errors import CxrsegError
from cxrseg.imaging import read_mask
from tests.test_imaging import png_header

MAX_PIXELS = 4_000_000  # keeps each decode's memory small; the limit itself is what is under test
SECONDS = 5.0


def run_property(budget: int, strategy: st.SearchStrategy, check: Callable[..., None]) -> None:
    """Run `check` over `budget` examples drawn from `strategy` (no example database: runs stay independent)."""
    options = settings(max_examples=budget, deadline=2000, database=None, suppress_health_check=[HealthCheck.too_slow])
    options(given(strategy)(check))()


BUDGETS = [pytest.param(30, id="fast"), pytest.param(600, id="long", marks=pytest.mark.slow)]


def _picture(kind: str) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    if kind == "tiff-float":
        Image.fromarray(rng.random((16, 12), dtype=np.float32), mode="F").save(buffer, format="TIFF")
    elif kind == "tiff-16":
        Image.fromarray(rng.integers(0, 65535, (16, 12), dtype=np.uint16)).save(buffer, format="TIFF")
    else:
        fmt = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP"}[kind]
        Image.fromarray(rng.integers(0, 255, (16, 12, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _dicom() -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, generate_uid(), "DX"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 12, 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 2, -10, 500, 1000
    ds.PixelData = np.arange(16 * 12, dtype="<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


SEEDS = {kind: _picture(kind) for kind in ("png", "jpeg", "bmp", "tiff-16", "tiff-float")} | {"dicom": _dicom()}


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid file of one format with random bytes overwritten (headers most often) and maybe truncated."""
    kind = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[kind])
    for _ in range(draw(st.integers(1, 8))):
        spot = draw(st.one_of(st.integers(0, min(200, len(data) - 1)), st.integers(0, len(data) - 1)))
        data[spot] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    suffix = ".dcm" if kind == "dicom" else "." + kind.split("-")[0]
    return suffix, bytes(data[:cut])


@st.composite
def png_headers(draw: st.DrawFn) -> tuple[str, bytes]:
    """A PNG claiming random sizes, colour types and bit depths, with a random (short) compressed body."""
    big = st.integers(0, 2**31 - 1)
    width, height = draw(st.one_of(st.integers(0, 3000), big)), draw(st.one_of(st.integers(0, 3000), big))
    mode, depth = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7])), draw(st.sampled_from([1, 2, 4, 8, 16, 3]))
    return ".png", png_header(width, height, mode, depth, draw(st.binary(max_size=256)))


random_files = st.tuples(st.sampled_from(["", ".png", ".tif", ".dcm", ".jpg", ".bmp"]), st.binary(max_size=600))
dicm_files = st.binary(max_size=300).map(lambda tail: ("", b"\0" * 128 + b"DICM" + tail))  # preamble, no suffix


def _decode_one(suffix: str, data: bytes, name: str = "x") -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / (name + suffix)
        path.write_bytes(data)
        start = time.monotonic()
        try:
            xray = read_xray(path, MAX_PIXELS)
        except CxrsegError as exc:
            assert "\n" not in str(exc).replace(str(path), ""), str(exc)  # one line, whatever the name holds
        else:
            assert xray.gray.dtype == np.float32 and xray.gray.ndim == 2
            assert np.isfinite(xray.gray).all() and xray.gray.min() >= 0 and xray.gray.max() <= 1
        with contextlib.suppress(CxrsegError):
            read_mask(path)
        assert time.monotonic() - start < SECONDS
        assert path.read_bytes() == data  # the input is never modified


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("source", ["random", "dicm", "mutated", "png-header"])
def test_decoding_ends_in_an_xray_or_a_typed_error(budget: int, source: str) -> None:
    strategy = {"random": random_files, "dicm": dicm_files, "mutated": mutated(), "png-header": png_headers()}
    run_property(budget, strategy[source], lambda case: _decode_one(*case))


names = st.one_of(
    st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=60),
    st.binary(min_size=1, max_size=60).map(lambda raw: os.fsdecode(raw.replace(b"/", b"_").replace(b"\0", b"_"))),
).filter(lambda name: name not in (".", "..") and len(os.fsencode(name)) < 200)


@pytest.mark.parametrize("budget", BUDGETS)
def test_any_file_name_decodes_or_gives_a_typed_error(budget: int) -> None:
    cases = st.tuples(names, st.sampled_from([".png", ".dcm", ""]))
    run_property(budget, cases, lambda case: _decode_one(case[1], SEEDS["png"], case[0]))


def test_item11_pydicom_warnings_do_not_leak(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mislabelled.dcm"  # the header says implicit VR, the body is explicit VR
    path.write_bytes(SEEDS["dicom"].replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2\x00\x00\x00"))
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as outside pytest: shown once on stderr
        xray = read_xray(path)
    assert xray.gray.shape == (16, 12)
    assert capfd.readouterr().err == ""
