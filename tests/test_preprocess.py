"""The one preprocessing: fit into a square, normalise over the image, and restore to the original size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrseg.config import InferenceSettings, Settings
from cxrseg.dataset import Pair
from cxrseg.inference.evaluate import evaluate_model
from cxrseg.preprocess import Geometry, fit_geometry, fit_to_square, normalize, restore, valid_region


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (300, 200, Geometry(300, 200, 128, 128 / 300, 0, 21, 128, 85)),  # 200 * 128 / 300 = 85.3 -> 85
        (200, 300, Geometry(200, 300, 128, 128 / 300, 21, 0, 85, 128)),
        (64, 64, Geometry(64, 64, 128, 2.0, 0, 0, 128, 128)),
        (1000, 3, Geometry(1000, 3, 128, 0.128, 0, 63, 128, 1)),  # never narrower than one pixel
        (301, 100, Geometry(301, 100, 64, 64 / 301, 0, 21, 64, 21)),  # 21.3 -> 21; (64 - 21) // 2 = 21
    ],
)
def test_geometry_by_hand(height: int, width: int, expected: Geometry) -> None:
    assert fit_geometry(height, width, expected.size) == expected


def test_fit_scales_into_the_centre_and_pads_with_zeros() -> None:
    fitted, geometry = fit_to_square(np.full((300, 200), 0.7, dtype=np.float32), 128)
    assert fitted.shape == (128, 128) and fitted.dtype == np.float32
    inner = fitted[:, 21:106]
    assert np.allclose(inner, 0.7) and fitted[:, :21].max() == 0 and fitted[:, 106:].max() == 0
    assert np.array_equal(valid_region(geometry) > 0, fitted > 0)
    assert valid_region(geometry).dtype == np.float32 and valid_region(geometry).sum() == 128 * 85


def test_fit_resizes_with_interpolation_not_by_picking_pixels() -> None:
    stripes = np.tile([0.0, 1.0], (4, 4)).astype(np.float32)  # (4, 8) alternating columns
    fitted, _ = fit_to_square(stripes, 4)  # to (2, 4): each output pixel averages a dark and a bright one
    assert np.all(np.abs(fitted[1:3] - 0.5) < 0.1)  # picking pixels would give 0 or 1


def test_fit_and_restore_preserve_aspect_and_position() -> None:
    image = np.zeros((100, 50), dtype=np.float32)
    image[:, :25] = 1.0  # left half bright
    fitted, geometry = fit_to_square(image, 64)
    assert geometry.inner_height == 64 and geometry.inner_width == 32 and geometry.left == 16
    assert fitted[:, :16].max() == 0 and fitted[:, 16:31].min() > 0.99 and fitted[:, 33:48].max() < 0.01
    back = restore(torch.from_numpy(fitted), geometry).numpy()
    assert back.shape == (100, 50)
    assert back[:, :23].min() > 0.99 and back[:, 27:].max() < 0.01


def test_restore_is_bilinear_with_half_pixel_centres() -> None:
    """A step from 1 to 0 between rows 63 and 64 of 128 crosses 0.5 between rows 149 and 150 of 300."""
    geometry = fit_geometry(300, 200, 128)
    probs = torch.zeros(128, 128)
    probs[:64] = 1.0
    back = restore(probs, geometry)
    assert back.shape == (300, 200) and back.dtype == torch.float32
    assert torch.all(back[:149] >= 0.5) and torch.all(back[150:] < 0.5) and torch.all(back[:140] == 1)
    assert back[149, 0] == pytest.approx(1 - ((149.5 * 128 / 300 - 0.5) - 63), abs=1e-5)


def test_normalize_is_a_z_score_over_the_image_only() -> None:
    images = torch.tensor([0.0, 2.0, 4.0, 9.0]).reshape(1, 1, 2, 2)
    valid = torch.tensor([1.0, 1.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    std = (8 / 3) ** 0.5  # mean 2, population variance (4 + 0 + 4) / 3
    expected = torch.tensor([-2 / std, 0.0, 2 / std, 0.0]).reshape(1, 1, 2, 2)
    assert torch.allclose(normalize(images, valid), expected, atol=1e-6)


def test_normalize_keeps_a_flat_image_finite_and_each_image_separate() -> None:
    images = torch.stack([torch.full((1, 4, 4), 0.5), torch.arange(16.0).reshape(1, 4, 4)])
    valid = torch.ones(2, 1, 4, 4)
    out = normalize(images, valid)
    assert torch.all(out[0] == 0)  # no division by a zero deviation
    assert torch.allclose(out[1].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(out[1].std(unbiased=False), torch.tensor(1.0), atol=1e-5)
    tiny = normalize(torch.tensor([0.0, 1e-4]).reshape(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    assert torch.allclose(tiny, torch.tensor([-0.05, 0.05]).reshape(1, 1, 1, 2), atol=1e-6)  # deviation >= 1e-3


def test_normalize_ignores_padding() -> None:
    images = torch.rand(2, 1, 8, 8)
    valid = torch.zeros(2, 1, 8, 8)
    valid[:, :, 2:6] = 1
    out = normalize(images, valid + 0)
    inside = out[valid.bool()].view(2, -1)
    assert torch.allclose(inside.mean(1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(inside.std(1, unbiased=False), torch.ones(2), atol=1e-3)
    assert out[~valid.bool()].abs().max() == 0


class UpperHalf(torch.nn.Module):
    """A 'model' that calls the upper half of its square input lung, whatever the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full_like(x, -10.0)
        logits[..., : x.shape[-2] // 2, :] = 10.0
        return logits


def test_evaluate_scores_at_the_masks_own_resolution(tmp_path: Path) -> None:
    """A 128 px prediction is restored to a 300x200 mask and scored there, with the Dice worked out by hand.

    The model says rows 0-63 of its 128 px input; restored, that is rows 0-149 of 300, all 200 columns
    (30,000 px). The truth is rows 100-299 (40,000 px); they share rows 100-149 (10,000 px):
    Dice = 2 * 10,000 / 70,000 = 2/7 and IoU = 10,000 / 60,000 = 1/6.
    """
    truth = np.zeros((300, 200), dtype=np.uint8)
    truth[100:] = 255
    Image.fromarray(truth).save(tmp_path / "case.mask.png")
    Image.fromarray(np.full((300, 200), 128, dtype=np.uint8)).save(tmp_path / "case.png")
    settings = Settings.model_validate({"preprocess": {"image_size": 128}, "train": {"precision": "fp32"}})
    cfg = InferenceSettings(device="cpu", postprocess=False)
    evaluation = evaluate_model(UpperHalf(), settings, [Pair(tmp_path / "case.png", tmp_path / "case.mask.png")], cfg)
    (row,) = evaluation.rows
    assert row.scores.dice == pytest.approx(2 / 7, abs=1e-9) and row.scores.iou == pytest.approx(1 / 6, abs=1e-9)
    assert row.scores.precision == pytest.approx(1 / 3, abs=1e-9) and row.scores.recall == pytest.approx(1 / 4)
    assert row.scores.hd95 == pytest.approx(150.0)  # a quarter of the truth's outline (row 299) is 150 px away


def test_restore_crops_exactly_the_image_out_of_uneven_padding() -> None:
    """200 px wide in 128: 85 columns from column 21, leaving 22 columns of padding on the right."""
    geometry = fit_geometry(300, 200, 128)
    probs = torch.zeros(128, 128)
    probs[:, 21:64] = 1.0  # the left half of the image (43 of its 85 columns)
    back = restore(probs, geometry)
    assert back[:, :99].min() == 1 and back[:, 104:].max() == 0
