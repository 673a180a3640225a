"""Quality flags and lung measurements, each flag on a constructed case."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrseg.inference.quality import (
    FLAGS,
    MIN_BORDER_CONFIDENCE,
    LungMeasures,
    border_confidence,
    columns,
    measure,
    midline_contrast,
    quality_flags,
    split_sides,
)

H, W = 100, 120


def ellipse(cy: float, cx: float, ry: float, rx: float, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((yy / shape[0] - cy) / ry) ** 2 + ((xx / shape[1] - cx) / rx) ** 2 <= 1


def two_lungs(right_rx: float = 0.13, left_rx: float = 0.13) -> np.ndarray:
    """Patient's right lung on the image's left, left lung on the image's right (~0.2 of the image)."""
    return ellipse(0.5, 0.3, 0.3, right_rx) | ellipse(0.5, 0.7, 0.3, left_rx)


def chest(mask: np.ndarray) -> np.ndarray:
    """A frontal film: dark air outside, bright body and mediastinum, dark lungs."""
    body = ellipse(0.5, 0.5, 0.48, 0.46, mask.shape)
    return np.where(mask, 0.25, np.where(body, 0.75, 0.05)).astype(np.float32)


def measures(mask: np.ndarray, image: np.ndarray | None = None, sharp: bool = True) -> LungMeasures:
    prob = np.where(mask, 0.97, 0.03).astype(np.float32)
    border = border_confidence(prob if sharp else np.where(mask, 0.6, 0.4), np.ones_like(prob))
    return measure(mask, prob, 0.5, border, midline_contrast(chest(mask) if image is None else image))


def test_a_normal_film_has_no_flag() -> None:
    m = measures(two_lungs())
    assert 0.1 < m.lung_fraction < 0.5 and m.components == 2
    assert quality_flags(m) == []
    assert columns(m)["flags"] == ""


def test_no_lung_replaces_the_mask_flags() -> None:
    mask = np.zeros((H, W), dtype=bool)
    m = measures(mask, image=chest(two_lungs()))
    assert quality_flags(m) == ["no_lung"]
    assert math.isnan(m.mean_probability) and math.isnan(m.border_confidence)
    assert quality_flags(measures(ellipse(0.5, 0.3, 0.05, 0.05))) == ["no_lung"]  # a speck


def test_lung_fraction_low_and_high() -> None:
    small = ellipse(0.5, 0.3, 0.15, 0.07) | ellipse(0.5, 0.7, 0.15, 0.07)
    assert "lung_fraction_low" in quality_flags(measures(small))
    large = ellipse(0.5, 0.27, 0.48, 0.24) | ellipse(0.5, 0.73, 0.48, 0.24)
    assert "lung_fraction_high" in quality_flags(measures(large))


def test_not_two_lungs_for_one_merged_region() -> None:
    merged = two_lungs() | ellipse(0.5, 0.5, 0.1, 0.3)
    m = measures(merged)
    assert m.components == 1
    assert "not_two_lungs" in quality_flags(m)


def test_left_right_imbalance_and_sides() -> None:
    mask = two_lungs(right_rx=0.15, left_rx=0.05)
    right, left, components = split_sides(mask)
    assert components == 2 and right > 2 * left  # the image-left lung is the patient's right
    assert "lr_imbalance" in quality_flags(measures(mask))
    assert "lr_imbalance" not in quality_flags(measures(two_lungs(0.13, 0.11)))


def test_low_border_confidence_for_a_blurred_outline() -> None:
    mask = two_lungs()
    sharp, blurred = measures(mask), measures(mask, sharp=False)
    assert sharp.border_confidence > 0.9 and blurred.border_confidence < MIN_BORDER_CONFIDENCE
    assert "low_border_confidence" in quality_flags(blurred)
    assert "low_border_confidence" not in quality_flags(sharp)


def test_inverted_film_is_flagged_even_without_lungs() -> None:
    image = chest(two_lungs())
    assert midline_contrast(image) > 0.3
    assert midline_contrast(1 - image) == pytest.approx(-midline_contrast(image))
    assert quality_flags(measures(two_lungs(), image=1 - image)) == ["inverted"]
    assert quality_flags(measures(np.zeros((H, W), dtype=bool), image=1 - image)) == ["no_lung", "inverted"]
    assert math.isnan(midline_contrast(np.full((H, W), 0.5, dtype=np.float32)))  # flat: undecided, no flag


def test_measure_counts_specks_before_post_processing() -> None:
    mask = two_lungs()
    prob = np.where(mask, 0.9, 0.1).astype(np.float32)
    prob[5, 5] = prob[90, 110] = 0.8  # two specks the post-processing would drop
    m = measure(mask, prob, 0.5)
    assert m.raw_components == 4 and m.components == 2
    assert m.mean_probability == pytest.approx(0.9)


def test_columns_in_square_millimetres_only_with_a_spacing() -> None:
    m = measures(two_lungs())
    plain = columns(m)
    assert plain["lung_mm2"] is None and plain["spacing_row_mm"] is None
    spaced = columns(m, (0.2, 0.25))
    assert spaced["lung_mm2"] == pytest.approx(m.lung_px * 0.05, abs=0.1)
    assert spaced["right_lung_mm2"] + spaced["left_lung_mm2"] == pytest.approx(spaced["lung_mm2"], abs=0.2)
    assert set(quality_flags(measures(np.ones((H, W), dtype=bool)))) <= set(FLAGS)


@pytest.mark.parametrize(
    ("height", "width", "rows", "strip", "left_field", "right_field"),
    [  # worked out from the documented percentages: rows 25-65 %, strip 45-55 %, fields 15-35 % and 65-85 %
        (4, 8, (1, 2), (3, 4), (1, 2), (5, 6)),
        (5, 9, (1, 3), (4, 5), (1, 3), (5, 7)),  # the strip never narrower than one column
        (40, 60, (10, 26), (27, 33), (9, 21), (39, 51)),
    ],
)
def test_midline_contrast_reads_the_documented_regions(height, width, rows, strip, left_field, right_field) -> None:
    image = np.random.default_rng(height).permutation(height * width).reshape(height, width).astype(np.float64)
    r = slice(*rows)
    fields = np.concatenate([image[r, slice(*left_field)].ravel(), image[r, slice(*right_field)].ravel()])
    low, high = np.percentile(image, [1, 99])
    expected = (np.median(image[r, slice(*strip)]) - np.median(fields)) / (high - low)
    assert midline_contrast(image) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("canvas", [0.0, 1.0])
def test_a_real_film_on_a_flat_canvas_is_judged_by_the_film(canvas: float) -> None:
    """A packaged film pasted off-centre into a figure with a caption and an arrow, upright and inverted: the
    fixed regions of the whole figure would fall on the canvas (a white one read every upright film as
    inverted), the film's own box does not."""
    from PIL import Image, ImageDraw

    from cxrseg import assets
    from cxrseg.imaging import read_image

    film = read_image(assets.SAMPLE_DIR / "image" / "CHNCXR_0001_0.png")
    for inverted in (False, True):
        figure = np.full((760, 900), canvas, np.float32)
        figure[40:552, 60:572] = 1 - film if inverted else film
        picture = Image.fromarray((figure * 255).astype(np.uint8))
        ink = int(255 * (1 - canvas))
        ImageDraw.Draw(picture).text((80, 600), "Figure 2. Bilateral consolidation", fill=ink)
        ImageDraw.Draw(picture).line((700, 200, 600, 300), fill=ink, width=5)
        contrast = midline_contrast(np.asarray(picture, np.float32) / 255)
        assert (contrast < 0) == inverted
        assert contrast == pytest.approx(midline_contrast(figure[40:552, 60:572]), abs=0.02)


def test_a_contrast_boosted_film_on_a_white_page_is_not_read_from_one_half() -> None:
    """Boosted contrast prints the mediastinum as white as the page: the film falls into pieces on the canvas,
    and a box round the largest piece alone held one lung and the page (read as inverted)."""
    from cxrseg import assets
    from cxrseg.imaging import read_image

    film = np.clip((read_image(assets.SAMPLE_DIR / "image" / "CHNCXR_0019_0.png") - 0.5) * 2 + 0.5, 0, 1)
    page = np.ones((600, 600), np.float32)
    page[44:556, 44:556] = film
    assert (film == 1).mean() > 0.2
    assert midline_contrast(page) > 0.1 and midline_contrast(page) == pytest.approx(midline_contrast(film), abs=0.02)


def test_midline_contrast_of_tiny_or_flat_images_is_unknown() -> None:
    assert math.isnan(midline_contrast(np.arange(21.0).reshape(3, 7)))
    assert math.isnan(midline_contrast(np.arange(21.0).reshape(7, 3)))
    assert math.isnan(midline_contrast(np.arange(28.0).reshape(4, 7)))
    assert math.isnan(midline_contrast(np.arange(24.0).reshape(3, 8)))
    assert math.isnan(midline_contrast(np.full((40, 60), 0.5)))
    assert math.isfinite(midline_contrast(np.arange(32.0).reshape(4, 8)))


def test_border_confidence_averages_the_band_around_the_outline() -> None:
    """A 10x10 square in a 30x30 map: the band is 2 px each side of the outline, 0 elsewhere counts not."""
    prob = np.full((30, 30), 0.5)
    prob[10:20, 10:20] = 0.9  # |2p - 1|: 0.8 inside, 0 outside
    valid = np.ones((30, 30))
    dilated = np.zeros((30, 30), dtype=bool)
    dilated[8:22, 8:22] = True  # two 8-connected dilations of the square: corners included
    eroded = np.zeros((30, 30), dtype=bool)
    eroded[12:18, 12:18] = True
    band = dilated & ~eroded
    expected = np.abs(2 * prob[band] - 1).mean()  # (100 - 36) * 0.8 / (196 - 36)
    assert border_confidence(prob, valid) == pytest.approx(expected) == pytest.approx(64 * 0.8 / 160)
    assert border_confidence(prob, valid, threshold=0.5) == pytest.approx(expected)
    assert border_confidence(np.where(prob > 0.5, 0.5, 0.1), valid, threshold=0.5) != border_confidence(
        np.where(prob > 0.5, 0.5, 0.1), valid, threshold=0.4
    )  # p = 0.5 is not above a 0.5 threshold


def test_border_confidence_ignores_padding_and_needs_an_outline() -> None:
    prob = np.full((30, 30), 0.1)
    prob[10:20, 10:20] = 0.9
    valid = np.zeros((30, 30))
    valid[:, :15] = 1  # the right half is padding
    prob_padded = prob.copy()
    prob_padded[:, 15:] = 0.5  # |2p - 1| = 0 there: counting it would lower the mean
    assert border_confidence(prob_padded, valid) == pytest.approx(0.8)
    assert math.isnan(border_confidence(np.full((8, 8), 0.9), np.ones((8, 8))))  # all lung: no outline
    assert math.isnan(border_confidence(np.full((8, 8), 0.1), np.ones((8, 8))))  # no lung
    assert math.isnan(border_confidence(prob, np.zeros((30, 30))))  # all padding
    outside = np.full((8, 8), 0.9)
    outside[:, 4:] = 0.1
    assert math.isnan(border_confidence(outside, (outside < 0.5).astype(float)))  # lung only in the padding


def flags_of(fraction: float = 0.2, right: int = 100, left: int = 100, border: float = 0.8, midline: float = 0.3):
    lung = round(fraction * 10_000)
    m = LungMeasures(100, 100, lung, right, left, 2, 2, 0.9, border, midline)
    return quality_flags(m)


def test_flag_thresholds_are_strict() -> None:
    """Each threshold value itself passes; just past it flags."""
    from cxrseg.inference import quality as q

    assert flags_of(q.NO_LUNG_FRACTION) == ["lung_fraction_low"] and flags_of(0.0199)[0] == "no_lung"
    assert flags_of(q.LOW_LUNG_FRACTION) == [] and flags_of(0.0999) == ["lung_fraction_low"]
    assert flags_of(q.HIGH_LUNG_FRACTION) == [] and flags_of(0.5001) == ["lung_fraction_high"]
    assert flags_of(right=100, left=50) == [] and flags_of(right=100, left=49) == ["lr_imbalance"]
    assert flags_of(border=MIN_BORDER_CONFIDENCE) == [] and flags_of(border=0.6499) == ["low_border_confidence"]
    assert flags_of(midline=0.0) == [] and flags_of(midline=-0.001) == ["inverted"]
    assert flags_of(border=math.nan, midline=math.nan) == []


def test_measure_sizes_sides_and_probabilities() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:15, 2:10] = True  # 80 px on the image's left: the patient's right
    mask[5:10, 20:26] = True  # 30 px on the image's right
    prob = np.where(mask, 0.8, 0.2)
    prob[0, 0] = 0.5  # exactly the threshold: not a part
    m = measure(mask, prob, 0.5, 0.7, 0.1)
    assert (m.height, m.width, m.lung_px, m.right_px, m.left_px) == (20, 30, 110, 80, 30)
    assert (m.components, m.raw_components) == (2, 2) and m.mean_probability == pytest.approx(0.8)
    assert (m.border_confidence, m.midline_contrast) == (0.7, 0.1)
    assert math.isnan(measure(np.zeros((4, 4), dtype=bool), np.zeros((4, 4)), 0.5).mean_probability)


def test_columns_round_numbers_and_leave_unknowns_empty() -> None:
    m = LungMeasures(20, 30, 110, 80, 30, 2, 3, 0.812345, 0.765432, -0.123456)
    row = columns(m, (0.33, 0.7))  # 0.231 mm2 per pixel
    assert row == {
        "height": 20, "width": 30, "lung_px": 110, "lung_fraction": 0.18333, "right_lung_px": 80,
        "left_lung_px": 30, "spacing_row_mm": 0.33, "spacing_col_mm": 0.7, "lung_mm2": 25.4,
        "right_lung_mm2": 18.5, "left_lung_mm2": 6.9, "components": 2, "raw_components": 3,
        "mean_probability": 0.8123, "border_confidence": 0.7654, "midline_contrast": -0.1235,
        "flags": "lr_imbalance;inverted",
    }  # fmt: skip
    plain = columns(LungMeasures(20, 30, 110, 80, 30, 2, 3, 0.8, math.nan, 0.1))
    assert plain["spacing_row_mm"] is plain["lung_mm2"] is plain["right_lung_mm2"] is plain["left_lung_mm2"] is None
    assert plain["border_confidence"] is None


def test_rows_round_trip_through_csv_and_json(tmp_path) -> None:
    import json

    from cxrseg.inference.table import COLUMNS, empty_row, read_rows, write_rows

    m = LungMeasures(20, 30, 110, 80, 30, 2, 3, 0.812345, math.nan, 0.2)  # no border confidence: an empty cell
    ok = empty_row() | {"input": "a.png", "status": "ok", "mask": "a.png.mask.png"} | columns(m, (0.5, 0.25))
    failed = empty_row() | {"input": 'b, "odd".png', "status": "error", "message": "b: unreadable"}
    assert set(empty_row()) == set(COLUMNS) and empty_row()["lung_px"] is None and empty_row()["input"] == ""
    path = write_rows([ok, failed], tmp_path / "predictions.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 3
    assert read_rows(path) == {"a.png.mask.png": ok}  # typed back; rows without a mask are left out
    cells = lines[2].split(",")[-len(COLUMNS) :]
    assert cells[list(COLUMNS).index("lung_px")] == "" and "None" not in lines[2]  # unknowns are empty cells
    assert json.loads(write_rows([ok, failed], tmp_path / "p.json", as_json=True).read_text()) == [ok, failed]
    assert read_rows(tmp_path / "missing.csv") == {}
    (tmp_path / "edited.csv").write_text(lines[0] + "\n" + lines[1].replace(",110,", ",many,") + "\n" + lines[1] + "\n")
    assert list(read_rows(tmp_path / "edited.csv")) == ["a.png.mask.png"]  # the unreadable row is skipped
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(Exception, match="binary.csv is not a readable predictions table"):
        read_rows(tmp_path / "binary.csv")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cells(path) -> list[str]:
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        return [value for row in csv.reader(handle) for value in row]


@pytest.mark.parametrize(
    "name", ['=HYPERLINK("x","y").png', "-2+3.png", "+x.png", "@SUM(A1).png", "\tx.png", "'=x.png"]
)
def test_predictions_csv_text_cells_never_start_a_formula_and_read_back_exactly(tmp_path, name) -> None:
    """CSV injection: predictions.csv wrote names and messages starting with = + - @ tab or CR
    as they were, so a spreadsheet ran them as formulas; they now start with a single quote, which read_rows
    removes (so --skip-existing still finds the row), and negative numbers stay numbers."""
    from cxrseg.inference.table import empty_row, read_rows, write_rows

    ok = empty_row() | {"input": name, "status": "ok", "mask": name + ".mask.png", "overlay": name + ".overlay.jpg"}
    ok |= {"lung_px": 110, "midline_contrast": -0.25}
    failed = empty_row() | {"input": "/data/" + name, "status": "error", "message": "-" + name + ": unreadable"}
    path = write_rows([ok, failed], tmp_path / "predictions.csv")
    assert [cell for cell in _csv_cells(path) if cell.startswith(FORMULA_START)] == ["-0.25"]  # a number stays one
    assert read_rows(path) == {name + ".mask.png": ok}
