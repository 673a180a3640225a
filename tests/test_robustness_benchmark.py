"""The robustness benchmark's corruptions: seeded, aligned, and doing what their names say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from tests.conftest import ellipse_pair

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "corruptions.py"
spec = importlib.util.spec_from_file_location("robustness_corruptions", SCRIPT)
corruptions = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = corruptions  # dataclasses look their module up while the file runs
spec.loader.exec_module(corruptions)

GEOMETRIC = [n for n, c in corruptions.CORRUPTIONS.items() if c.geometric]
INTENSITY = [n for n, c in corruptions.CORRUPTIONS.items() if not c.geometric]


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    return ellipse_pair(5)


def test_issue_list_is_covered() -> None:
    expected = {"zoom_in_apex", "zoom_out", "rotate_15", "low_res_256", "noise", "consolidation", "effusion"}
    expected |= {"burnt_text", "portable", "jpeg_q15"}
    assert expected <= set(corruptions.CORRUPTIONS)
    assert len(corruptions.CORRUPTIONS) >= 11


@pytest.mark.parametrize("name", list(corruptions.ALL))
def test_deterministic_and_seeded_per_image(name: str, pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = pair
    first = corruptions.corrupt(name, image, mask, "case_000")
    second = corruptions.corrupt(name, image.copy(), mask.copy(), "case_000")
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[0].dtype == np.uint8 and first[1].dtype == bool


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_moves_mask_with_image(name: str, pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = pair
    out, out_mask = corruptions.corrupt(name, image, mask, "case_000")
    assert out.shape == out_mask.shape
    assert out_mask.any()
    # the synthetic lungs are dark on a bright body: they must stay dark where the moved mask says lung
    assert out[out_mask].mean() < out[~out_mask].mean() - 40


@pytest.mark.parametrize("name", INTENSITY)
def test_intensity_keeps_mask_and_changes_image(name: str, pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = pair
    out, out_mask = corruptions.corrupt(name, image, mask, "case_000")
    assert np.array_equal(out_mask, mask)
    assert out.shape == image.shape
    assert np.abs(out.astype(int) - image).mean() > 0.5


def test_zoom_in_cuts_the_apices(pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = pair
    _, out_mask = corruptions.corrupt("zoom_in_apex", image, mask, "case_000")
    assert out_mask.shape[0] < mask.shape[0]
    assert out_mask[0].any(), "the lungs should run into the new top edge"
    assert out_mask.sum() < mask.sum()


def test_consolidation_brightens_one_lung(pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = pair
    out, _ = corruptions.corrupt("consolidation", image, mask, "case_000")
    labels, count = ndimage.label(mask)
    assert count == 2
    rises = sorted(out[labels == i].mean() - image[labels == i].mean() for i in (1, 2))
    assert rises[1] > 15, "one lung gets an opacity"
    assert abs(rises[0]) < 2, "the other lung stays as it was"


def test_consolidation_both_brightens_half_of_each_lung(pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = pair
    out, _ = corruptions.corrupt("consolidation_both", image, mask, "case_000")
    labels, _ = ndimage.label(mask)
    for i in (1, 2):
        raised = (out[labels == i].astype(int) - image[labels == i]) > 40
        assert 0.3 < raised.mean() < 0.75, "about half of each lung is opaque"


def test_whiteout_whitens_one_whole_lung(pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = pair
    out, _ = corruptions.corrupt("whiteout", image, mask, "case_000")
    labels, _ = ndimage.label(mask)
    raised = sorted(((out[labels == i].astype(int) - image[labels == i]) > 40).mean() for i in (1, 2))
    assert raised[1] > 0.85 and raised[0] < 0.02, "one lung white nearly to its edge, the other untouched"


@pytest.mark.parametrize("name", list(corruptions.STACKED))
def test_stacked_corruptions_keep_image_and_mask_aligned(name: str, pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = pair
    out, out_mask = corruptions.corrupt(name, image, mask, "case_000")
    assert out.shape == out_mask.shape and out_mask.any()
    if not corruptions.STACKED[name].geometric:
        assert np.array_equal(out_mask, mask)
    first_alone = corruptions.corrupt(corruptions.STACKED[name].steps[0], image, mask, "case_000")[0]
    assert out.shape != first_alone.shape or not np.array_equal(out, first_alone)  # more than its first step


def test_a_stacked_corruption_applies_every_step(pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = pair
    alone, alone_mask = corruptions.corrupt("zoom_out", image, mask, "case_000")
    out, out_mask = corruptions.corrupt("small_noisy_margin", image, mask, "case_000")
    assert out_mask.sum() < 0.5 * mask.sum() and alone_mask.sum() < 0.5 * mask.sum()  # shrunk to 65 %

    def grain(picture: np.ndarray) -> float:  # mean step between neighbouring pixels
        return float(np.abs(np.diff(picture.astype(int), axis=1)).mean())

    assert np.bincount(alone.ravel()).max() > 0.3 * alone.size  # zoom_out alone: a flat margin
    assert grain(out) > 3 * grain(alone) + 5  # then noise over margin and film
    assert set(corruptions.STACKED).isdisjoint(corruptions.CORRUPTIONS)
    assert all(step in corruptions.CORRUPTIONS for s in corruptions.STACKED.values() for step in s.steps)
