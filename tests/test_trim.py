"""Uniform margins cropped before the model: a film pasted into a canvas, a figure's frame, black padding."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cxrseg.assets import BUNDLED_MODEL, SAMPLE_DIR
from cxrseg.checkpoint import read_info
from cxrseg.cli.app import app
from cxrseg.dataset import find_pairs, load_pairs
from cxrseg.inference.engine import fit_image
from cxrseg.preprocess import MARGIN_TOLERANCE, MIN_CONTENT, MIN_CONTENT_SHARE, content_box, restore
from cxrseg.runtime import describe_preprocessing

RNG = np.random.default_rng(7)


def film(height: int, width: int) -> np.ndarray:
    """Texture in every row and column, as a radiograph has."""
    return RNG.uniform(0.2, 0.8, (height, width)).astype(np.float32)


def pasted(inner: np.ndarray, top: int, left: int, shape: tuple[int, int], grey: float) -> np.ndarray:
    canvas = np.full(shape, grey, dtype=np.float32)
    canvas[top : top + inner.shape[0], left : left + inner.shape[1]] = inner
    return canvas


@pytest.mark.parametrize("grey", [0.0, 0.5, 1.0])
def test_a_film_pasted_into_a_flat_canvas_is_found(grey: float) -> None:
    assert content_box(pasted(film(60, 40), 17, 23, (128, 100), grey)) == (17, 23, 60, 40)


def test_margins_of_different_greys_on_each_side_all_go() -> None:
    image = np.zeros((100, 90), dtype=np.float32)  # black above
    image[90:] = 1.0  # a white strip below
    image[10:90, :7] = 0.3  # grey on the left, between the strips
    image[10:90, 85:] = 0.8
    image[10:90, 7:85] = film(80, 78)
    assert content_box(image) == (10, 7, 80, 78)


def test_a_flat_margin_saved_as_jpeg_goes_a_grainy_one_stays() -> None:
    inner = film(50, 50)
    jpeg_like = pasted(inner, 20, 30, (100, 120), 0.5) + RNG.uniform(-1.5 / 255, 1.5 / 255, (100, 120))
    assert content_box(jpeg_like.astype(np.float32)) == (20, 30, 50, 50)
    grainy = pasted(inner, 20, 30, (100, 120), 0.5) + RNG.normal(0, 0.03, (100, 120))
    assert content_box(grainy.astype(np.float32)) == (0, 0, 100, 120)


def test_a_label_in_the_margin_stops_the_crop_there() -> None:
    image = pasted(film(50, 50), 40, 30, (100, 120), 0.0)
    image[10:14, 60:70] = 1.0  # a burnt-in letter above the film
    top, left, height, width = content_box(image)
    assert (top, height) == (10, 80) and (left, width) == (30, 50)


def test_blank_ramped_and_tiny_images_are_kept_whole() -> None:
    assert content_box(np.zeros((40, 30), dtype=np.float32)) == (0, 0, 40, 30)
    ramp = np.tile(np.linspace(0, 1, 30, dtype=np.float32), (40, 1))  # every column is one grey
    assert content_box(ramp) == (0, 0, 40, 30)
    speck = pasted(film(MIN_CONTENT - 1, 40), 30, 10, (100, 100), 0.0)
    assert content_box(speck) == (0, 0, 100, 100)


def test_a_mark_on_a_large_blank_film_is_not_taken_for_the_film() -> None:
    """A letter of 30 px on a blank 1000 px film is over the 16 px floor but a small share of the side: the
    film stays whole. A film of a fifth of the side inside the same canvas is still found."""
    mark = pasted(film(30, 30), 500, 500, (1000, 1000), 0.0)
    assert content_box(mark) == (0, 0, 1000, 1000)
    share = int(MIN_CONTENT_SHARE * 1000)
    assert content_box(pasted(film(share - 1, 400), 100, 100, (1000, 1000), 0.0)) == (0, 0, 1000, 1000)
    assert content_box(pasted(film(share, 400), 100, 100, (1000, 1000), 0.0)) == (100, 100, share, 400)
    assert content_box(pasted(film(200, 200), 300, 400, (1000, 1000), 0.5)) == (300, 400, 200, 200)
    # rounded up: a tenth of 1005 px is 100.5, so 100 rows are too few and 101 enough
    assert content_box(pasted(film(100, 400), 100, 100, (1005, 1005), 0.0)) == (0, 0, 1005, 1005)
    assert content_box(pasted(film(101, 400), 100, 100, (1005, 1005), 0.0)) == (100, 100, 101, 400)


def test_the_model_sees_the_film_alone_and_the_map_goes_back_in_place() -> None:
    inner = film(60, 40)
    canvas = pasted(inner, 17, 23, (128, 100), 0.5)
    trimmed = fit_image(canvas, 64, trim=True)
    assert np.array_equal(trimmed.image, fit_image(inner, 64).image)
    assert not np.array_equal(fit_image(canvas, 64).image, trimmed.image)  # without trim: the canvas, smaller
    back = restore(torch.ones(64, 64), trimmed.geometry).numpy()
    assert back.shape == (128, 100)
    assert back[17:77, 23:63].min() > 0.999
    back[17:77, 23:63] = 0
    assert back.max() == 0  # nothing in the cropped margin


def test_training_crops_each_mask_with_its_image(tmp_path: Path) -> None:
    inner = film(60, 40)
    mask = np.zeros((60, 40), dtype=bool)
    mask[10:50, 5:20] = True
    for name, image, truth in (
        ("canvas", pasted(inner, 17, 23, (128, 100), 0.0), pasted(mask.astype(np.float32), 17, 23, (128, 100), 0)),
        ("alone", inner, mask.astype(np.float32)),
    ):
        (tmp_path / name / "image").mkdir(parents=True)
        (tmp_path / name / "mask").mkdir()
        Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(tmp_path / name / "image" / "a.png")
        Image.fromarray((truth > 0.5).astype(np.uint8) * 255).save(tmp_path / name / "mask" / "a.png")
    loaded = {
        name: load_pairs(find_pairs(tmp_path / name / "image", tmp_path / name / "mask"), 32, workers=1, trim=True)
        for name in ("canvas", "alone")
    }
    assert torch.equal(loaded["canvas"].images, loaded["alone"].images)
    assert torch.equal(loaded["canvas"].masks, loaded["alone"].masks)
    assert loaded["canvas"].masks.sum() > 0


def predict_masks(inputs: Path, out: Path, *flags: str) -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]]]:
    """`cxrseg predict` with the bundled model: the written masks and the predictions.csv rows, by input stem."""
    args = ["predict", str(inputs), "--out", str(out), "--checkpoint", str(BUNDLED_MODEL), "--no-overlay"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--backend", "torch", *flags])
    assert result.exit_code == 0, result.output
    with (out / "predictions.csv").open(newline="") as handle:
        rows = {Path(row["input"]).stem: row for row in csv.DictReader(handle)}
    masks = {}
    for stem, row in rows.items():
        with Image.open(out / row["mask"]) as written:
            masks[stem] = np.asarray(written) > 127
    return masks, rows


def test_predict_trim_border_segments_a_film_in_a_canvas_as_the_film_alone(tmp_path: Path) -> None:
    """Real pixels: a sample film shrunk into a wide mid-grey canvas gets, with --trim-border, exactly the lungs
    it gets alone and none in the margin; the bundled model does not crop unless asked."""
    assert not read_info(BUNDLED_MODEL).settings.preprocess.trim_border
    with Image.open(SAMPLE_DIR / "image" / "CHNCXR_0071_0.png") as opened:
        small = opened.convert("L").resize((320, 320), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (512, 512), 128)
    canvas.paste(small, (150, 100))
    inputs = tmp_path / "in"
    inputs.mkdir()
    small.save(inputs / "alone.png")
    canvas.save(inputs / "canvas.png")
    masks, rows = predict_masks(inputs, tmp_path / "trimmed", "--trim-border")
    assert masks["alone"].sum() > 0.15 * masks["alone"].size  # two lungs found
    assert np.array_equal(masks["canvas"][100:420, 150:470], masks["alone"])
    assert masks["canvas"].sum() == masks["alone"].sum()  # nothing in the margin
    assert rows["canvas"]["lung_fraction"] == rows["alone"]["lung_fraction"]  # a share of the film, not the canvas
    assert "lung_fraction_low" not in rows["canvas"]["flags"]
    plain, _ = predict_masks(inputs, tmp_path / "plain")  # the checkpoint's default: the canvas as it is
    assert not np.array_equal(plain["canvas"][100:420, 150:470], plain["alone"])


def test_the_onnx_input_contract_spells_out_the_crop_only_when_the_model_crops() -> None:
    settings = read_info(BUNDLED_MODEL).settings
    for trim in (False, True):
        preprocess = settings.preprocess.model_copy(update={"trim_border": trim})
        chosen = settings.model_copy(update={"preprocess": preprocess})
        contract = json.loads(describe_preprocessing(chosen.model_dump_json()))
        assert contract["trim_border"] is trim and ("trim" in contract) is trim
    assert f"{MARGIN_TOLERANCE!r}" in contract["trim"]
    assert f"min(the side, max({MIN_CONTENT} px, ceil({MIN_CONTENT_SHARE} x the side)))" in contract["trim"]


def test_evaluate_trim_border_scores_films_in_a_canvas_as_the_films_alone(tmp_path: Path) -> None:
    """Real pixels through `cxrseg evaluate`: with --trim-border, sample films shrunk into a mid-grey canvas
    (their masks pasted alike) score exactly as the shrunk films alone; without it the scores differ."""
    for folder in ("alone", "canvas"):
        (tmp_path / folder / "image").mkdir(parents=True)
        (tmp_path / folder / "mask").mkdir()
    for name in ("CHNCXR_0001_0", "CHNCXR_0071_0", "CHNCXR_0098_0"):
        with (
            Image.open(SAMPLE_DIR / "image" / f"{name}.png") as image,
            Image.open(SAMPLE_DIR / "mask" / f"{name}.png") as mask,
        ):
            small = image.convert("L").resize((300, 300), Image.Resampling.BILINEAR)
            small_mask = mask.convert("L").resize((300, 300), Image.Resampling.NEAREST)
        small.save(tmp_path / "alone" / "image" / f"{name}.png")
        small_mask.save(tmp_path / "alone" / "mask" / f"{name}.png")
        canvas, canvas_mask = Image.new("L", (512, 480), 128), Image.new("L", (512, 480), 0)
        canvas.paste(small, (170, 40))
        canvas_mask.paste(small_mask, (170, 40))
        canvas.save(tmp_path / "canvas" / "image" / f"{name}.png")
        canvas_mask.save(tmp_path / "canvas" / "mask" / f"{name}.png")

    def per_image(folder: str, *flags: str) -> list[float]:
        csv_path = tmp_path / f"{folder}{''.join(flags)}.csv"
        args = ["evaluate", "--checkpoint", str(BUNDLED_MODEL), "--data", str(tmp_path / folder), "--split", "all"]
        args += ["--csv", str(csv_path), "--device", "cpu", "--backend", "torch"]
        result = CliRunner().invoke(app, [*args, *flags])
        assert result.exit_code == 0, result.output
        with csv_path.open(newline="") as handle:
            return [float(row["dice"]) for row in sorted(csv.DictReader(handle), key=lambda row: row["image"])]

    alone = per_image("alone", "--trim-border")
    assert min(alone) > 0.85
    assert per_image("canvas", "--trim-border") == alone
    assert per_image("canvas") != alone
