"""`cxrseg predict`: formats, DICOM, bad inputs, names, resume, refusals, CSV and the command end to end."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid
from typer.testing import CliRunner

import cxrseg
from cxrseg import assets
from cxrseg.checkpoint import CheckpointInfo, build_model, save_checkpoint
from cxrseg.cli.app import app
from cxrseg.config import InferenceSettings, Settings
from cxrseg.dicom import read_dicom, read_xray
from cxrseg.errors import DataError, InputPathError
from cxrseg.inference.predict import OVERLAY_MAX_SIDE, PredictOptions, predict_paths, sample_inputs
from cxrseg.inference.table import COLUMNS

H, W = 48, 64  # deliberately not square


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = Settings.model_validate(
        {"preprocess": {"image_size": 32}, "model": {"base_channels": 4, "depth": 2}, "train": {"precision": "fp32"}}
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(path, build_model(settings), CheckpointInfo(settings=settings))
    return path


def chest(height: int = H, width: int = W, seed: int = 0) -> np.ndarray:
    """uint8 frontal 'film': dark air, bright body and mediastinum, two dark lungs."""
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    body = ((yy - 0.5) / 0.48) ** 2 + ((xx - 0.5) / 0.46) ** 2 <= 1
    lungs = sum(((yy - 0.5) / 0.3) ** 2 + ((xx - cx) / 0.13) ** 2 <= 1 for cx in (0.3, 0.7)) > 0
    image = np.where(lungs, 60, np.where(body, 190, 15)) + np.random.default_rng(seed).normal(0, 8, (height, width))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **elements) -> Path:
    """Uncompressed Explicit VR Little Endian DICOM (16-bit unless `pixels` is uint8)."""
    syntax = elements.pop("syntax", ExplicitVRLittleEndian)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, generate_uid(), "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    with_pixels = elements.pop("with_pixels", True)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if with_pixels:
        raw = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds.PixelData = raw if syntax == ExplicitVRLittleEndian else encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 64])
    ds.save_as(path, enforce_file_format=True)
    return path


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def run(inputs, out: Path, checkpoint: Path, **options) -> list[dict]:
    cfg = InferenceSettings(batch_size=options.pop("batch_size", 4), **options.pop("cfg", {}))
    result = predict_paths(inputs, out, checkpoint, cfg, PredictOptions(workers=2, **options))
    return result.rows


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def mask_of(out: Path, row: dict) -> np.ndarray:
    with Image.open(out / row["mask"]) as image:
        return np.asarray(image)


def picture(path: Path) -> tuple[tuple[int, int], str]:
    with Image.open(path) as image:
        return image.size, image.mode


def test_every_image_format_gets_a_mask_at_its_own_size(tmp_path: Path, checkpoint: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    gray = chest()
    Image.fromarray(gray).save(src / "gray8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(src / "gray16.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(src / "gray16.tif")
    Image.fromarray(gray).convert("RGB").save(src / "colour.jpg", quality=95)
    Image.fromarray(gray).convert("RGBA").save(src / "alpha.png")
    Image.fromarray(gray).save(src / "gray.bmp")
    Image.fromarray(chest(80, 30)).save(src / "tall.png")
    rows = run([src], tmp_path / "out", checkpoint, probabilities=True)
    assert [r["status"] for r in rows] == ["ok"] * 7, rows
    for row in rows:
        expected = (80, 30) if "tall" in row["input"] else (H, W)
        assert (row["height"], row["width"]) == expected
        mask = mask_of(tmp_path / "out", row)
        assert mask.shape == expected and set(np.unique(mask)) <= {0, 255}
        assert row["lung_px"] == (mask > 0).sum() == row["right_lung_px"] + row["left_lung_px"]
        assert picture(tmp_path / "out" / row["overlay"]) == (expected[::-1], "RGB")
        with Image.open(tmp_path / "out" / row["overlay"]) as shown:
            assert shown.format == "JPEG"  # a picture to look at: the fast encoder, not a PNG
        assert picture(tmp_path / "out" / (row["mask"].removesuffix(".mask.png") + ".prob.png")) == (
            expected[::-1],
            "L",
        )
    by_name = {Path(r["input"]).name: mask_of(tmp_path / "out", r) for r in rows}
    np.testing.assert_array_equal(by_name["gray8.png"], by_name["gray16.png"])  # same picture, other bit depth


def test_jpeg_exif_orientation_is_honoured(tmp_path: Path, checkpoint: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(chest()).save(tmp_path / "rotated.jpg", exif=exif)
    (row,) = run([tmp_path / "rotated.jpg"], tmp_path / "out", checkpoint)
    assert (row["height"], row["width"]) == (W, H)
    assert mask_of(tmp_path / "out", row).shape == (W, H)


def test_overlays_of_large_images_are_downscaled(tmp_path: Path, checkpoint: Path) -> None:
    Image.fromarray(chest(1300, 1100)).save(tmp_path / "big.png")
    (row,) = run([tmp_path / "big.png"], tmp_path / "out", checkpoint)
    assert mask_of(tmp_path / "out", row).shape == (1300, 1100)
    assert max(picture(tmp_path / "out" / row["overlay"])[0]) == OVERLAY_MAX_SIDE


def test_dicom_monochrome1_matches_monochrome2_and_spacing_gives_mm2(tmp_path: Path, checkpoint: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    pixels = chest().astype(np.uint16) * 16  # 12-bit range
    write_dicom(src / "mono2.dcm", pixels, PixelSpacing=[0.2, 0.25])
    write_dicom(src / "mono1.dcm", 4095 - pixels, "MONOCHROME1", ImagerPixelSpacing=[0.3, 0.3])
    write_dicom(src / "IM0001", pixels)  # no extension: found by its DICM preamble
    write_dicom(src / "mono2_negative.dcm", 4095 - pixels)  # what mono1.dcm would look like if not inverted
    Image.fromarray(chest()).save(src / "mono2.png")
    np.testing.assert_allclose(read_dicom(src / "mono1.dcm").gray, read_dicom(src / "mono2.dcm").gray, atol=1e-6)
    rows = {Path(r["input"]).name: r for r in run([src], tmp_path / "out", checkpoint, batch_size=1)}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    masks = {name: mask_of(tmp_path / "out", row) for name, row in rows.items()}
    np.testing.assert_array_equal(masks["mono1.dcm"], masks["mono2.dcm"])
    np.testing.assert_array_equal(masks["IM0001"], masks["mono2.dcm"])
    assert (masks["mono2_negative.dcm"] != masks["mono1.dcm"]).any()  # so the equality above means something
    mono2 = rows["mono2.dcm"]
    assert (mono2["spacing_row_mm"], mono2["spacing_col_mm"], mono2["spacing_source"]) == (0.2, 0.25, "PixelSpacing")
    assert mono2["lung_mm2"] == pytest.approx(mono2["lung_px"] * 0.05, abs=0.1)
    assert rows["mono1.dcm"]["spacing_source"] == "ImagerPixelSpacing"
    assert rows["mono2.png"]["lung_mm2"] is None and rows["mono2.png"]["spacing_row_mm"] is None


def test_dicom_rescale_is_applied_before_the_window(tmp_path: Path) -> None:
    stored = np.tile(np.linspace(0, 4000, W).astype(np.uint16), (H, 1))
    path = write_dicom(
        tmp_path / "ct.dcm", stored, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2000
    )
    gray = read_dicom(path).gray  # window [0, 2000] in rescaled units = stored 1000..3000
    assert np.all(gray[:, stored[0] <= 1000] == 0) and np.all(gray[:, stored[0] >= 3000] == 1)
    assert np.all(np.diff(gray[0]) >= 0) and 0 < gray[0, W // 2] < 1
    plain = read_dicom(write_dicom(tmp_path / "slope.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024)).gray
    np.testing.assert_allclose(plain, stored / 4000, atol=1e-5)


def test_bad_inputs_get_error_rows_and_the_rest_is_processed(tmp_path: Path, checkpoint: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = png_bytes(chest())
    (src / "a_good.png").write_bytes(good)
    (src / "empty.png").write_bytes(b"")
    (src / "truncated.png").write_bytes(good[: len(good) // 2])
    jpeg = io.BytesIO()
    Image.fromarray(chest()).save(jpeg, format="JPEG")
    (src / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (src / "text.png").write_text("not an image")
    huge = bytearray(png_bytes(np.zeros((1, 1), dtype=np.uint8)))
    huge[16:24] = struct.pack(">II", 12000, 12000)  # IHDR says 12000x12000: a decompression bomb
    huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))
    (src / "huge.png").write_bytes(bytes(huge))
    write_dicom(src / "no_pixels.dcm", chest().astype(np.uint16), with_pixels=False)
    write_dicom(src / "jpegls.dcm", chest().astype(np.uint16), syntax=JPEGLSLossless)
    write_dicom(src / "huge.dcm", np.zeros((2, 2), dtype=np.uint16), Rows=12000, Columns=12000)
    (src / "notes.txt").write_text("ignored: not an X-ray suffix")
    result = predict_paths(
        [src, tmp_path / "missing.png", src / "notes.txt"], tmp_path / "out", checkpoint, InferenceSettings()
    )
    rows = {Path(r["input"]).name: r for r in result.rows}
    assert rows.pop("a_good.png")["status"] == "ok"
    expected = {
        "empty.png": "empty file",
        "truncated.png": "truncated",
        "truncated.jpg": "truncated",
        "text.png": "cannot be read as an image",
        "huge.png": "100 megapixels",
        "huge.dcm": "100 megapixels",
        "no_pixels.dcm": "truncated or corrupt DICOM",
        "jpegls.dcm": "transfer syntax",
        "missing.png": "no such file",
        "notes.txt": "cannot be read as an image",
    }
    assert set(rows) == set(expected)
    for name, words in expected.items():
        assert rows[name]["status"] == "error" and words in rows[name]["message"], (name, rows[name]["message"])
    assert result.failed == len(expected) and result.ignored == [src / "notes.txt"]
    assert not list((tmp_path / "out").glob("*.tmp")) and not (tmp_path / "out" / "empty.png.mask.png").exists()


def test_a_dicom_element_of_unknown_value_representation_is_a_typed_error(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "odd.dcm", chest().astype(np.uint16))
    raw = path.read_bytes()
    rows = b"\x28\x00\x10\x00US"  # (0028,0010) Rows, explicit VR
    assert raw.count(rows) == 1
    path.write_bytes(raw.replace(rows, b"\x28\x00\x10\x00U\x00"))  # a VR pydicom does not know
    with pytest.raises(DataError, match=r"odd\.dcm: not a readable DICOM file .*Unknown Value Representation"):
        read_dicom(path)
    # in an element read only while decoding the pixels: still no advice to install a decoder (uncompressed)
    bits = b"\x28\x00\x00\x01US"  # (0028,0100) Bits Allocated
    assert raw.count(bits) == 1
    path.write_bytes(raw.replace(bits, b"\x28\x00\x00\x01U\x00"))
    with pytest.raises(DataError, match=r"odd\.dcm: not a readable DICOM file .*Unknown Value Representation") as info:
        read_dicom(path)
    assert "install" not in str(info.value)


def test_a_blank_image_is_an_error_row_and_a_picture_named_dcm_is_read_as_the_picture(
    tmp_path: Path, checkpoint: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(src / "black.png")
    Image.fromarray(np.full((H, W), 40000, np.uint16)).save(src / "flat16.png")
    Image.fromarray(chest()).save(src / "film.jpg")
    (src / "exported.dcm").write_bytes((src / "film.jpg").read_bytes())  # a JPEG under a DICOM name
    rows = {Path(r["input"]).name: r for r in run([src], tmp_path / "out", checkpoint)}
    for name in ("black.png", "flat16.png"):
        assert rows[name]["status"] == "error" and f"{name}: blank image" in rows[name]["message"]
    assert rows["exported.dcm"]["status"] == "ok"
    np.testing.assert_array_equal(
        mask_of(tmp_path / "out", rows["exported.dcm"]), mask_of(tmp_path / "out", rows["film.jpg"])
    )


def _no_pixels(path: Path, sop_class: str, **elements) -> Path:
    """A DICOM file of `sop_class` without pixel data (a DICOMDIR, a report), with the DICM preamble."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_dicom_without_pixels_is_named_truncated_not_dicom_or_non_image_object(tmp_path: Path) -> None:
    """Catches a cut-off DICOM X-ray being called 'a DICOMDIR, report or other non-image object; remove it'
    (dcmread(force=True) stops silently at the damage), and random bytes named .dcm being called DICOM."""
    whole = write_dicom(tmp_path / "whole.dcm", chest().astype(np.uint16), SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1")
    cut = tmp_path / "IM0001.dcm"
    cut.write_bytes(whole.read_bytes()[:500])  # the transfer stopped inside the header, before Rows
    header_only = tmp_path / "rows.dcm"  # an image header, Rows included, and nothing after it
    header_only.write_bytes(whole.read_bytes()[: whole.read_bytes().index(b"\xe0\x7f\x10\x00")])
    (tmp_path / "random.dcm").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "notes.dcm").write_text("a text file under a DICOM name\n" * 20)
    report = _no_pixels(tmp_path / "report.dcm", "1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    expected = {
        cut: "truncated or corrupt DICOM",
        header_only: "truncated or corrupt DICOM",
        tmp_path / "random.dcm": "not a DICOM file",
        tmp_path / "notes.dcm": "not a DICOM file",
        report: "DICOM file without pixel data (a DICOMDIR, report or other non-image object)",
    }
    for path, words in expected.items():
        with pytest.raises(DataError) as caught:
            read_xray(path)
        assert f"{path}: {words}" in str(caught.value), str(caught.value)


def test_a_cd_exports_dicomdir_is_not_an_input(tmp_path: Path, checkpoint: Path) -> None:
    """Catches every DICOM CD export exiting 1: its DICOMDIR (the CD's index, no picture) was planned as an input
    and got an error row; it is now listed as ignored, by name or by its Media Storage SOP Class."""
    cd = tmp_path / "cd"
    (cd / "DICOM").mkdir(parents=True)
    write_dicom(cd / "DICOM" / "IM0001", chest().astype(np.uint16))  # no suffix: found by its preamble
    _no_pixels(cd / "DICOMDIR", "1.2.840.10008.1.3.10")
    _no_pixels(cd / "DICOM" / "index.dcm", "1.2.840.10008.1.3.10")  # a renamed one: its SOP Class says
    result = predict_paths([cd], tmp_path / "out", checkpoint, InferenceSettings(), PredictOptions(recursive=True))
    assert [(Path(row["input"]).name, row["status"]) for row in result.rows] == [("IM0001", "ok")]
    assert sorted(path.name for path in result.ignored) == ["DICOMDIR", "index.dcm"]
    glob = predict_paths([str(cd / "*")], tmp_path / "glob", checkpoint, InferenceSettings(), PredictOptions())
    assert [row["status"] for row in glob.rows] == ["ok"]  # 'cd/*' matches DICOMDIR and the folder DICOM/
    assert sorted(path.name for path in glob.ignored) == ["DICOMDIR", "index.dcm"]


@pytest.mark.parametrize(
    "window", [{"WindowCenter": 2000, "WindowWidth": 0}, {"WindowCenter": 90000, "WindowWidth": 100}]
)
def test_an_unusable_dicom_window_falls_back_to_the_full_range(
    tmp_path: Path, checkpoint: Path, window: dict[str, int]
) -> None:
    """Catches good pixels refused for their window: WindowWidth 0 gave an error row and a window wholly outside
    the pixel values a 'blank image' one. The full-range scaling is used instead, and the row says so."""
    stored = (chest().astype(np.uint16) * 16).astype(np.uint16)
    plain = read_dicom(write_dicom(tmp_path / "plain.dcm", stored)).gray
    (tmp_path / "in").mkdir()
    path = write_dicom(tmp_path / "in" / "windowed.dcm", stored, **window)
    xray = read_xray(path)
    np.testing.assert_allclose(xray.gray, plain, atol=1e-6)
    assert (
        f"{path}: DICOM window (WindowCenter {window['WindowCenter']}" in xray.note and "full pixel range" in xray.note
    )
    (row,) = run([path.parent], tmp_path / "out", checkpoint)
    assert row["status"] == "ok" and row["message"] == xray.note


def test_missing_pydicom_gives_an_install_hint(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    write_dicom(tmp_path / "a.dcm", chest().astype(np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    (row,) = run([tmp_path / "a.dcm"], tmp_path / "out", checkpoint)
    assert row["status"] == "error" and "pip install 'cxrseg[dicom]'" in row["message"]


def test_names_never_collide_and_mirror_the_input_tree(tmp_path: Path, checkpoint: Path) -> None:
    for folder in ("one", "two", "one/sub"):
        (tmp_path / folder).mkdir()
    Image.fromarray(chest()).save(tmp_path / "one" / "a.png")
    write_dicom(tmp_path / "one" / "a.dcm", chest().astype(np.uint16))
    Image.fromarray(chest()).save(tmp_path / "one" / "sub" / "b.png")
    Image.fromarray(chest()).save(tmp_path / "two" / "A.png")
    rows = run([tmp_path / "one", tmp_path / "two"], tmp_path / "out", checkpoint, recursive=True)
    names = [r["mask"] for r in rows]
    assert names == ["a.dcm.mask.png", "a.png.mask.png", "sub/b.png.mask.png", "A.png-2.mask.png"]
    assert all((tmp_path / "out" / name).is_file() for name in names)
    rows = run([str(tmp_path / "one" / "*.png"), str(tmp_path / "*" / "nothing*")], tmp_path / "glob", checkpoint)
    assert [r["mask"] for r in rows] == ["a.png.mask.png", ""] and "no file matches" in rows[1]["message"]


def test_refuses_to_write_into_an_input_folder(tmp_path: Path, checkpoint: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(chest()).save(src / "a.png")
    with pytest.raises(DataError, match="input folder"):
        run([src], src, checkpoint)
    with pytest.raises(DataError, match="input folder"):
        run([src], src / "sub" / "out", checkpoint, recursive=True)
    with pytest.raises(DataError, match="next to input X-rays"):
        run([src / "a.png"], src, checkpoint)
    with pytest.raises(DataError, match="is a file"):
        run([src], src / "a.png", checkpoint)
    assert run([src], src / "predictions", checkpoint)[0]["status"] == "ok"  # not listed without --recursive


def test_refuses_an_out_that_directly_holds_an_input_a_glob_picked(tmp_path: Path, checkpoint: Path) -> None:
    """Catches predictions.csv landing beside input X-rays: with 'g/*/a.png' and --out g/x, where g/x/a.png is an
    input, the masks go to g/x/x/ and g/x/y/, so only out_dir itself holds an input, and it was not compared."""
    for folder in ("x", "y"):
        (tmp_path / "g" / folder).mkdir(parents=True)
        Image.fromarray(chest()).save(tmp_path / "g" / folder / "a.png")
    with pytest.raises(InputPathError, match=r"next to input X-rays in .*g/x;"):
        run([str(tmp_path / "g" / "*" / "a.png")], tmp_path / "g" / "x", checkpoint)
    assert sorted(p.name for p in (tmp_path / "g" / "x").iterdir()) == ["a.png"]  # nothing written


def test_skip_existing_resumes_an_interrupted_run(tmp_path: Path, checkpoint: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        Image.fromarray(chest(seed=i)).save(src / f"x{i}.png")
    (src / "x3.png").write_bytes(b"")
    run([src], out, checkpoint)
    table = read_csv(out / "predictions.csv")
    table[0]["lung_px"] = "123456"  # a value a recomputation would not give back
    with (out / "predictions.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table[:2])  # the killed run had not yet saved x2's row
    (out / "x1.png.overlay.jpg").unlink()  # nor written x1's overlay
    kept_mtime = (out / "x0.png.mask.png").stat().st_mtime_ns
    calls: list[tuple[str, int, float]] = []
    result = predict_paths(
        [src],
        out,
        checkpoint,
        InferenceSettings(),
        PredictOptions(skip_existing=True),
        on_start=lambda total, kept: calls.append(("start", total, kept)),
        on_advance=lambda n, rate: calls.append(("advance", n, rate)),
    )
    assert result.skipped == 1 and result.rows[0]["lung_px"] == 123456
    assert (out / "x0.png.mask.png").stat().st_mtime_ns == kept_mtime
    assert (out / "x1.png.overlay.jpg").is_file() and [r["status"] for r in result.rows] == ["ok"] * 3 + ["error"]
    assert calls[0] == ("start", 4, 1) and sum(c[1] for c in calls[1:]) == 3
    assert read_csv(out / "predictions.csv")[0]["lung_px"] == "123456"


def test_skip_existing_never_keeps_a_namesakes_mask_or_an_older_one(tmp_path: Path, checkpoint: Path) -> None:
    # two hospitals' exports both hold film.png; the second is sent to the same --out with --skip-existing
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    Image.fromarray(chest(seed=1)).save(tmp_path / "a" / "film.png")
    Image.fromarray(chest(H * 2, W, seed=2)).save(tmp_path / "b" / "film.png")
    out = tmp_path / "out"
    first = run([tmp_path / "a"], out, checkpoint)
    second = run([tmp_path / "b"], out, checkpoint, skip_existing=True)
    assert first[0]["height"] == H and second[0]["height"] == 2 * H  # b's own mask, not a's row
    assert mask_of(out, second[0]).shape == (2 * H, W)
    # the same file by another path is kept; a file changed after its mask was written is predicted again
    other_path = tmp_path / "b" / ".." / "b" / "film.png"
    result = predict_paths([other_path], out, checkpoint, InferenceSettings(), PredictOptions(skip_existing=True))
    assert result.skipped == 1
    Image.fromarray(chest(H, W, seed=3)).save(tmp_path / "b" / "film.png")
    mask = out / "film.png.mask.png"
    os.utime(tmp_path / "b" / "film.png", ns=(mask.stat().st_mtime_ns + 10**9,) * 2)
    again = predict_paths([tmp_path / "b"], out, checkpoint, InferenceSettings(), PredictOptions(skip_existing=True))
    assert again.skipped == 0 and again.rows[0]["height"] == H and mask_of(out, again.rows[0]).shape == (H, W)


def test_skip_existing_tells_relative_namesakes_apart(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    # `cd a && predict film.png`, then `cd b && predict film.png --skip-existing` into the same --out
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    Image.fromarray(chest(H * 2, W, seed=2)).save(tmp_path / "b" / "film.png")  # b's film is the older file
    Image.fromarray(chest(seed=1)).save(tmp_path / "a" / "film.png")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path / "a")
    (first,) = run([Path("film.png")], out, checkpoint)
    assert first["input"] == str(tmp_path / "a" / "film.png")  # recorded absolute
    monkeypatch.chdir(tmp_path / "b")
    (second,) = run([Path("film.png")], out, checkpoint, skip_existing=True)
    assert second["height"] == 2 * H and mask_of(out, second).shape == (2 * H, W)
    assert read_csv(out / "predictions.csv")[0]["input"] == str(tmp_path / "b" / "film.png")


def test_an_interrupted_run_keeps_its_rows_for_the_resume(tmp_path: Path, checkpoint: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(6):
        Image.fromarray(chest(seed=i)).save(src / f"x{i}.png")

    def interrupt(count: int, images_per_s: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_paths([src], out, checkpoint, InferenceSettings(batch_size=2), PredictOptions(), on_advance=interrupt)
    saved = read_csv(out / "predictions.csv")
    assert saved and all((out / row["mask"]).is_file() for row in saved)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    result = predict_paths([src], out, checkpoint, InferenceSettings(batch_size=2), PredictOptions(skip_existing=True))
    assert result.skipped == len(saved) and [r["status"] for r in result.rows] == ["ok"] * 6


def test_csv_and_json_columns(tmp_path: Path, checkpoint: Path) -> None:
    Image.fromarray(chest()).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    result = predict_paths(
        [tmp_path / "a.png", tmp_path / "b.png"],
        tmp_path / "out",
        checkpoint,
        InferenceSettings(postprocess=False),
        PredictOptions(write_json=True, overlay=False),
    )
    with result.csv_path.open(newline="") as handle:
        header = next(csv.reader(handle))
    assert header == list(COLUMNS)
    ok, bad = read_csv(result.csv_path)
    assert ok["status"] == "ok" and ok["message"] == "" and ok["overlay"] == "" and bad["status"] == "error"
    assert int(ok["height"]) == H and 0 <= float(ok["lung_fraction"]) <= 1 and ok["lung_mm2"] == ""
    assert ok["components"] == ok["raw_components"]  # without post-processing they are the same mask
    assert not (tmp_path / "out" / "a.png.overlay.jpg").exists()
    rows = json.loads(result.json_path.read_text())
    assert [r["status"] for r in rows] == ["ok", "error"] and set(rows[0]) == set(COLUMNS)


@pytest.mark.skipif(not assets.SAMPLE_DIR.is_dir(), reason="no sample X-rays in this checkout")
def test_sample_inputs_are_the_shipped_xrays() -> None:
    folders = sample_inputs()
    assert [f.name for f in folders] == ["image", "test_image"][: len(folders)]
    assert all(f.parent == Path(cxrseg.__file__).parent / "assets" / "sample" for f in folders)


def test_cli_end_to_end(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    runner = CliRunner()
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(chest()).save(src / "a.png")
    ckpt = ["--checkpoint", str(checkpoint)]
    result = runner.invoke(app, ["predict", str(src), "--out", str(tmp_path / "out"), *ckpt, "--tta"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a.png.mask.png").is_file() and (tmp_path / "out" / "predictions.csv").is_file()

    (src / "broken[red].png").write_bytes(b"\x89PNG\r\n")  # brackets: rich markup must be escaped
    result = runner.invoke(app, ["predict", str(src), "-o", str(tmp_path / "out2"), *ckpt, "--json", "--no-overlay"])
    assert result.exit_code == 1  # an input failed
    rows = json.loads(result.stdout)
    assert "broken[red].png" in result.stderr and "1 ok, 1 failed" in result.stderr
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert not (tmp_path / "out2" / "a.png.overlay.jpg").exists()

    result = runner.invoke(app, ["predict", str(src), "--out", str(src), *ckpt])
    assert isinstance(result.exception, InputPathError) and result.exception.exit_code == 2

    package = tmp_path / "package"
    (package / "assets" / "sample" / "test_image").mkdir(parents=True)
    Image.fromarray(chest()).save(package / "assets" / "sample" / "test_image" / "s.png")
    monkeypatch.setattr(assets, "SAMPLE_DIR", package / "assets" / "sample")
    result = runner.invoke(app, ["predict", "--sample", "--out", str(tmp_path / "sample"), *ckpt])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sample" / "s.png.mask.png").is_file()


def test_skip_existing_keeps_inputs_whose_names_look_like_formulas(tmp_path: Path, checkpoint: Path) -> None:
    """Names starting with = + - @ are written to predictions.csv behind a single quote (CSV
    injection); --skip-existing must still recognise their rows and keep them."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i, name in enumerate(("=x.png", "-y.png", "+z.png", "@w.png")):
        Image.fromarray(chest(seed=i)).save(src / name)
    run([src], out, checkpoint)
    assert {row["mask"][0] for row in read_csv(out / "predictions.csv")} == {"'"}
    result = predict_paths([src], out, checkpoint, InferenceSettings(), PredictOptions(skip_existing=True))
    assert result.skipped == 4 and sorted(row["mask"] for row in result.rows)[0] == "+z.png.mask.png"


def test_skip_existing_rebuilds_output_paths_from_the_input_not_the_table(tmp_path: Path, checkpoint: Path) -> None:
    """--skip-existing copied the previous table's `overlay` cell, so a hand-edited predictions.csv
    could point the kept row (and the report made from it) outside --out; the paths now come from the input."""
    from cxrseg.report import write_predict_report

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(chest()).save(src / "x0.png")
    run([src], out, checkpoint)
    secret = tmp_path / "secret.png"
    Image.fromarray(chest(seed=5)).save(secret)
    table = read_csv(out / "predictions.csv")
    table[0]["overlay"] = str(secret)
    with (out / "predictions.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    result = predict_paths([src], out, checkpoint, InferenceSettings(), PredictOptions(skip_existing=True))
    assert result.skipped == 1 and result.rows[0]["overlay"] == "x0.png.overlay.jpg"
    assert read_csv(out / "predictions.csv")[0]["overlay"] == "x0.png.overlay.jpg"
    write_predict_report(out, result.rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out", "secret.png"]
