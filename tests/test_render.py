"""Pictures: labelled preview columns, a progress plot with axes and a grid, and mask overlays."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from cxrseg.inference.render import LEFT_COLOUR, MIN_PANEL, RIGHT_COLOUR, overlay, plot_progress, preview_sheet
from cxrseg.postprocess import LEFT, RIGHT, erode, lung_sides


def test_preview_sheet_labels_each_column_and_enlarges_small_inputs():
    gray = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    mask = gray > 0.5
    sheet = np.asarray(preview_sheet([(gray, mask, mask), (gray, mask, ~mask)]))
    assert sheet.shape == (2 * MIN_PANEL + 18, 3 * MIN_PANEL)
    header = sheet[:18]
    for column in range(3):  # some text in each column's header
        assert (header[:, column * MIN_PANEL : (column + 1) * MIN_PANEL] < 128).sum() > 10
    assert (sheet[18 + MIN_PANEL :, 2 * MIN_PANEL :] == 255 - sheet[18 + MIN_PANEL :, MIN_PANEL : 2 * MIN_PANEL]).all()


def test_progress_plot_has_a_grid_and_a_point_per_epoch():
    rows = [{"epoch": e, "train_loss": 1 / e, "val_dice": 0.8 + 0.01 * e} for e in range(1, 6)]
    picture = np.asarray(plot_progress(rows)).astype(int)
    grid = (picture == 225).all(axis=2)
    assert grid.any(axis=1).sum() >= 8 and grid.any(axis=0).sum() >= 8  # horizontal and vertical lines
    loss = (np.abs(picture - (200, 60, 40)).sum(axis=2) == 0).sum()
    dice = (np.abs(picture - (30, 110, 200)).sum(axis=2) == 0).sum()
    assert loss > 50 and dice > 50
    assert (np.asarray(plot_progress([])) < 128).any()  # axes and labels even before the first epoch


@settings(max_examples=150, deadline=None)
@given(
    arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.booleans()),
    st.integers(1, 3),
)
def test_erode_matches_scipy_binary_erosion(mask: np.ndarray, iterations: int) -> None:
    """The overlay's outline comes from a hand-written erosion: it must keep scipy's pixels, edges included."""
    np.testing.assert_array_equal(erode(mask, iterations), ndimage.binary_erosion(mask, iterations=iterations))


def test_overlay_outlines_each_lung_in_its_side_colour() -> None:
    gray = np.full((64, 64), 0.5, dtype=np.float32)
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:50, 6:26] = True  # image left: the patient's right lung
    mask[10:50, 38:58] = True
    sides, _ = lung_sides(mask)
    for picture in (overlay(gray, mask), overlay(gray, mask, sides=sides)):
        rgb = np.asarray(picture)
        assert tuple(rgb[10, 15]) == RIGHT_COLOUR and tuple(rgb[10, 45]) == LEFT_COLOUR  # outlines
        assert tuple(rgb[30, 15]) not in (RIGHT_COLOUR, tuple(rgb[0, 0])) and rgb[30, 15, 2] > rgb[30, 15, 0]  # tint
        assert tuple(rgb[0, 0]) == tuple(rgb[5, 32])  # outside the lungs: the X-ray, untouched


def _overlay_reference(grey: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """The overlay rule, pixel by pixel: outline in the side's colour, inside blended with it, outside grey."""
    sides, _ = lung_sides(mask)
    outline = mask & ~erode(mask, max(1, mask.shape[1] // 256))
    keep = round((1 - alpha) * 256)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.uint16)
    for colour, side in ((RIGHT_COLOUR, RIGHT), (LEFT_COLOUR, LEFT)):
        inside = sides == side
        rgb[inside] = (rgb[inside] * keep + np.array(colour) * (256 - keep)) >> 8
        rgb[inside & outline] = colour
    return rgb.astype(np.uint8)


@settings(max_examples=100, deadline=None)
@given(
    arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.booleans()),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.35, 0.5, 0.1]),
)
def test_overlay_colours_every_pixel_by_the_rule(mask: np.ndarray, seed: int, alpha: float) -> None:
    """The colour table and its byte packing: every pixel, every grey level and side, equals the plain rule."""
    grey = np.random.default_rng(seed).integers(0, 256, mask.shape, dtype=np.uint8)
    picture = overlay(grey, mask, alpha=alpha)
    assert picture.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(picture), _overlay_reference(grey, mask, alpha))
