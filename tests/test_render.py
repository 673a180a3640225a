"""Training pictures: labelled preview columns and a progress plot with axes and a grid."""

from __future__ import annotations

import numpy as np

from cxrseg.inference.render import MIN_PANEL, plot_progress, preview_sheet


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
