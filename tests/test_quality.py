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
