"""Quality flags and lung measurements, each flag on a constructed case."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrseg.imaging import grey_window
from cxrseg.inference.quality import (
    FLAGS,
    MIN_BORDER_CONFIDENCE,
    LungMeasures,
    border_confidence,
    columns,
    film_box,
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


def textured_chest(height: int = 60, width: int = 72, seed: int = 0) -> np.ndarray:
    """A frontal film with grain: no flat margin of its own, every pixel well away from black and white."""
    shape = (height, width)
    lungs = ellipse(0.5, 0.3, 0.3, 0.13, shape) | ellipse(0.5, 0.7, 0.3, 0.13, shape)
    body = ellipse(0.5, 0.5, 0.48, 0.46, shape)
    grain = np.random.default_rng(seed).uniform(-0.04, 0.04, shape)
    return np.where(lungs, 0.3, np.where(body, 0.75, 0.1)) + grain


def paste(film: np.ndarray, shape: tuple[int, int], top: int, left: int, canvas: float) -> np.ndarray:
    page = np.full(shape, canvas)
    page[top : top + film.shape[0], left : left + film.shape[1]] = film
    return page


def box(top: int, bottom: int, left: int, right: int) -> tuple[slice, slice]:
    return slice(top, bottom), slice(left, right)


@pytest.mark.parametrize("canvas", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(
    ("shape", "top", "left"),
    [
        ((100, 120), 1, 1),  # one pixel in from the top and left
        ((100, 120), 39, 47),  # one pixel in from the bottom and right
        ((100, 120), 0, 30),  # touching the top
        ((100, 120), 40, 10),  # touching the bottom
        ((62, 74), 1, 1),  # all but a one-pixel margin: only the outermost pixels are canvas
    ],
)
def test_film_box_is_the_films_extent(canvas, shape, top, left) -> None:
    film = textured_chest()
    page = paste(film, shape, top, left, canvas)
    assert film_box(page, (0.0, 1.0)) == box(top, top + 60, left, left + 72)


def test_film_box_is_the_whole_image_without_a_flat_canvas() -> None:
    film = textured_chest()
    assert film_box(film, (0.0, 1.0)) == box(0, 60, 0, 72)
    flat = np.full((40, 50), 0.5) + np.random.default_rng(1).uniform(-0.01, 0.01, (40, 50))
    assert film_box(flat, (0.0, 1.0)) == box(0, 40, 0, 50)  # all canvas: nothing to box
    page = paste(np.full((20, 30), 0.9), (40, 50), 10, 10, 0.0)
    assert film_box(page, (0.0, 1.0)) == box(10, 30, 10, 40)
    assert film_box(page, (0.5, 0.5)) == box(0, 40, 0, 50)  # an empty grey window: no canvas colour
    assert film_box(page, (1.0, 0.0)) == box(0, 40, 0, 50)


def test_film_box_needs_eight_pixels_each_way() -> None:
    film = np.full((4, 30), 0.9)
    assert film_box(paste(film, (8, 40), 2, 5, 0.0), (0.0, 1.0)) == box(2, 6, 5, 35)
    assert film_box(paste(film, (7, 40), 2, 5, 0.0), (0.0, 1.0)) == box(0, 7, 0, 40)
    assert film_box(paste(film.T, (40, 7), 5, 2, 0.0), (0.0, 1.0)) == box(0, 40, 0, 7)


@pytest.mark.parametrize(("inked", "found"), [(32, True), (33, False)])
def test_a_canvas_needs_80_percent_of_the_outermost_pixels(inked, found) -> None:
    """41 x 41: 160 outermost pixels, of which 128 (80 %) must have the canvas colour."""
    page = paste(np.full((31, 31), 0.9), (41, 41), 5, 5, 0.0)
    page[0, :inked] = 1.0  # a rule along the top, 32 px: under 5 % of the film, so never part of its box
    assert film_box(page, (0.0, 1.0)) == (box(5, 36, 5, 36) if found else box(0, 41, 0, 41))


def test_the_canvas_colour_reaches_exactly_two_percent_of_the_grey_window() -> None:
    """Window 25-75: pixels up to 1.0 (2 % of its width) from the canvas have its colour, in the frame and off it."""
    page = paste(np.full((20, 30), 10.0), (40, 60), 10, 15, 0.0)
    page[0] = 1.0  # 60 of the 196 outermost pixels, a tolerance away: a larger region than 5 % of the film
    assert film_box(page, (25.0, 75.0)) == box(10, 30, 15, 45)
    page[0] = 1.0 + 1e-9  # just over: not the canvas colour, so under 80 % of the frame has it
    assert film_box(page, (25.0, 75.0)) == box(0, 40, 0, 60)
    page[0] = 0.0
    page[35, 5:55] = 1.0 + 1e-9  # a rule below the film, off the canvas: it joins the box
    assert film_box(page, (25.0, 75.0)) == box(10, 36, 5, 55)
    page[35, 5:55] = 1.0
    assert film_box(page, (25.0, 75.0)) == box(10, 30, 15, 45)


@pytest.mark.parametrize(("piece", "joins"), [(20, True), (19, False)])
def test_regions_of_five_percent_of_the_largest_join_the_box(piece, joins) -> None:
    """Film 20 x 20 (400 px); a region of 20 px is 5 % of it, one of 19 px a caption."""
    page = paste(np.full((20, 20), 0.9), (60, 80), 5, 10, 0.0)
    page[50, 60 : 60 + piece] = 0.9
    assert film_box(page, (0.0, 1.0)) == (box(5, 51, 10, 80) if joins else box(5, 25, 10, 30))


def test_a_film_whose_mediastinum_matches_the_page_is_boxed_whole() -> None:
    """White page, mediastinum and body printed white: the film falls into two lungs of unequal size;
    the box spans both, and a caption under them stays out."""
    page = np.ones((80, 100))
    page[10:50, 12:40] = 0.3  # patient's right lung
    page[14:46, 55:78] = 0.35  # patient's left lung, smaller
    page[70, 20:40] = 0.0  # caption: 20 px, under 5 % of the larger lung's 1120
    assert film_box(page, (0.0, 1.0)) == box(10, 50, 12, 78)


@pytest.mark.parametrize(
    ("rows", "cols", "found"),
    [(20, 60, True), (19, 60, False), (60, 30, True), (60, 29, False)],
)
def test_a_box_under_a_quarter_of_the_image_is_not_the_film(rows, cols, found) -> None:
    """80 x 120: a quarter is 20 rows or 30 columns."""
    page = paste(np.full((rows, cols), 0.9), (80, 120), 10, 20, 0.0)
    assert film_box(page, (0.0, 1.0)) == (box(10, 10 + rows, 20, 20 + cols) if found else box(0, 80, 0, 120))


@pytest.mark.parametrize("canvas", [0.0, 1.0])
@pytest.mark.parametrize(("top", "left"), [(3, 5), (50, 40)])
def test_midline_contrast_of_a_film_on_a_canvas_is_that_of_the_film(canvas, top, left) -> None:
    """Its regions and its 1-99 % grey range are those of the film's own box, whatever the page round it."""
    film = textured_chest()
    assert film_box(film, (0.0, 1.0)) == box(0, 60, 0, 72)
    upright, inverted = midline_contrast(film), midline_contrast(1 - film)
    assert upright > 0.3 and inverted == pytest.approx(-upright)
    assert midline_contrast(paste(film, (120, 130), top, left, canvas)) == pytest.approx(upright, rel=1e-12)
    assert midline_contrast(paste(1 - film, (120, 130), top, left, canvas)) == pytest.approx(inverted, rel=1e-12)


@pytest.mark.parametrize(
    ("shape", "top", "left", "height", "width"),
    [
        ((61, 80), 1, 0, 60, 80),  # touching the left, right and bottom, one pixel short of the top
        ((80, 61), 0, 1, 80, 60),  # touching the top, bottom and right, one pixel short of the left
        ((100, 80), 0, 0, 80, 80),  # touching the top, left and right: a box as wide as high on a taller page
    ],
)
def test_midline_contrast_reads_an_oval_film_from_its_box(shape, top, left, height, width) -> None:
    """An oval film touching three sides of the page: its box is all but a strip of the page, and the film is
    still read from its box alone."""
    film = textured_chest(height, width, seed=3)
    film = np.where(ellipse(0.5, 0.5, 0.5, 0.5, film.shape), film, 0.0)
    page = paste(film, shape, top, left, 0.0)
    assert film_box(page, grey_window(page)) == box(top, top + height, left, left + width)
    assert midline_contrast(page) == pytest.approx(midline_contrast(film), rel=1e-12)
