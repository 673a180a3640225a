"""Right answers on real pixels: the bundled model through `cxrseg predict` and `cxrseg evaluate` on the sample.

The floors sit about 0.02 below what the bundled model scores (Dice 0.953 mean on the 24 sample pairs;
evaluate --split all 0.953), so a retrained model of similar accuracy passes and a mask that
is mirrored, shifted or averaged with an unflipped map does not (a mirrored mask scores about 0.70).
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from cxrseg.assets import BUNDLED_MODEL, SAMPLE_DIR
from cxrseg.cli.app import app
from cxrseg.inference.quality import split_sides
from tests.test_robustness_benchmark import corruptions

MEAN_DICE_FLOOR = 0.93
IMAGE_DICE_FLOOR = 0.75
SIDE_ERROR_CEILING = 0.10  # median |predicted - true| / true lung area per side; sides swapped: about 0.2


def truth_of(image: Path) -> np.ndarray:
    """The sample's expert mask of an X-ray in sample/image/ or sample/test_image/."""
    mask_dir = "test_mask" if image.parent.name == "test_image" else "mask"
    with Image.open(SAMPLE_DIR / mask_dir / image.name) as mask:
        return np.asarray(mask.convert("L")) > 127


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def predict_sample(out: Path, *flags: str) -> list[dict[str, str]]:
    """`cxrseg predict --sample` with the bundled model; the rows of the predictions.csv it wrote."""
    args = ["predict", "--sample", "--out", str(out), "--checkpoint", str(BUNDLED_MODEL), "--no-overlay"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--backend", "torch", *flags])
    assert result.exit_code == 0, result.output
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and all(row["status"] == "ok" for row in rows)
    return rows


def written_dice(out: Path, rows: list[dict[str, str]]) -> list[float]:
    """Dice of each written NAME.mask.png against the expert mask, at the mask's own size."""
    scores = []
    for row in rows:
        with Image.open(out / row["mask"]) as written:
            predicted = np.asarray(written) > 127
        truth = truth_of(Path(row["input"]))
        assert predicted.shape == truth.shape
        scores.append(dice(predicted, truth))
    return scores


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    out = tmp_path_factory.mktemp("predict")
    return out, predict_sample(out)


def test_written_masks_match_the_expert_masks(predicted: tuple[Path, list[dict[str, str]]]) -> None:
    scores = written_dice(*predicted)
    assert statistics.mean(scores) >= MEAN_DICE_FLOOR, scores
    assert min(scores) >= IMAGE_DICE_FLOOR, scores


def test_right_and_left_lung_areas_land_on_the_patients_sides(predicted: tuple[Path, list[dict[str, str]]]) -> None:
    """The patient's right lung is on the image's left; the CSV's areas per side follow the expert masks."""
    _, rows = predicted
    errors = []
    for row in rows:
        true_right, true_left, _ = split_sides(truth_of(Path(row["input"])))
        errors.append(abs(int(row["right_lung_px"]) - true_right) / true_right)
        errors.append(abs(int(row["left_lung_px"]) - true_left) / true_left)
    assert statistics.median(errors) <= SIDE_ERROR_CEILING, errors
    # the right lung is the larger one in 23 of the 24 expert masks; the predictions agree on most
    assert sum(int(row["right_lung_px"]) > int(row["left_lung_px"]) for row in rows) >= 18


def test_the_gastric_bubble_below_the_left_diaphragm_is_not_lung(predicted: tuple[Path, list[dict[str, str]]]) -> None:
    """CHNCXR_0029 shows a large gas bubble under the left dome: dark like lung, but outside the chest.

    A model that takes it for lung predicts a blob of about 1,800 pixels more than 15 px from the expert mask.
    """
    out, rows = predicted
    [row] = [r for r in rows if Path(r["input"]).name == "CHNCXR_0029_0.png"]
    with Image.open(out / row["mask"]) as written:
        mask = np.asarray(written) > 127
    far = mask & ~ndimage.binary_dilation(truth_of(Path(row["input"])), iterations=15)
    assert np.count_nonzero(far) <= 200, np.count_nonzero(far)


@pytest.mark.slow  # a second full predict of the sample
def test_tta_masks_match_the_expert_masks(tmp_path: Path) -> None:
    """Averaging with the flipped image's prediction only helps if that prediction is flipped back."""
    out = tmp_path / "tta"
    scores = written_dice(out, predict_sample(out, "--tta"))
    assert statistics.mean(scores) >= MEAN_DICE_FLOOR, scores
    assert min(scores) >= IMAGE_DICE_FLOOR, scores


@pytest.mark.slow  # a full evaluate of the sample
def test_evaluate_all_sample_pairs_scores_above_the_floor() -> None:
    args = ["evaluate", "--checkpoint", str(BUNDLED_MODEL), "--data", str(SAMPLE_DIR), "--split", "all", "--json"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--backend", "torch"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_images"] == 24
    assert report["dice"] >= MEAN_DICE_FLOOR and report["iou"] >= 0.87, report
    assert report["hd95"] <= 25, report  # pixels at 512 px; a mirrored mask is > 60 px off


def test_keep_by_confident_area_keeps_the_lungs_over_a_ghost_in_a_noisy_margin(tmp_path: Path) -> None:
    """Real pixels: sample film CHNCXR_0228 shrunk, halved, noisy and darkened in a wide margin (the benchmark's
    small_low_res_noisy chain, with a draw of its own: the key "CHNCXR_0228_0e" was searched for among ten
    draws of each sample film as one where the bundled model still draws a ghost; the benchmark's own draw of
    this film shows none). The model draws a faint ghost in the margin above the film; kept by area it
    displaces a lung, kept by confident area (`--keep-by confident_area`) both lungs stay and the ghost goes.
    If the bundled model changes and no longer ghosts here, the first assertion fails: pick another draw."""
    with (
        Image.open(SAMPLE_DIR / "test_image" / "CHNCXR_0228_0.png") as image,
        Image.open(SAMPLE_DIR / "test_mask" / "CHNCXR_0228_0.png") as mask,
    ):
        film, truth = np.asarray(image.convert("L")), np.asarray(mask.convert("L")) > 127
    film, truth = corruptions.corrupt("small_low_res_noisy", film, truth, "CHNCXR_0228_0e")
    (tmp_path / "in").mkdir()
    Image.fromarray(film).save(tmp_path / "in" / "a.png")
    lungs, count = ndimage.label(truth)
    far = ndimage.distance_transform_edt(~truth) > 15  # more than 15 px outside the expert outline
    assert count == 2

    def predicted(*flags: str) -> tuple[float, list[float], int]:
        """Dice, each lung's recall and the pixels far outside the outline."""
        out = tmp_path / f"out{len(flags)}"
        args = ["predict", str(tmp_path / "in"), "--out", str(out), "--checkpoint", str(BUNDLED_MODEL), "--no-overlay"]
        result = CliRunner().invoke(app, [*args, "--device", "cpu", "--backend", "torch", *flags])
        assert result.exit_code == 0, result.output
        with Image.open(out / "a.png.mask.png") as written:
            found = np.asarray(written) > 127
        recalls = [np.count_nonzero(found & (lungs == i)) / np.count_nonzero(lungs == i) for i in (1, 2)]
        return dice(found, truth), recalls, int(np.count_nonzero(found & far))

    score, recalls, ghost = predicted()  # the default: the two largest parts, the ghost among them
    no_ghost = "the bundled model no longer ghosts on this draw: search another one (see the docstring)"
    assert score < 0.7 and min(recalls) < 0.1 and ghost > 1000, (no_ghost, score, recalls, ghost)
    score, recalls, ghost = predicted("--keep-by", "confident_area")
    assert score > 0.85 and min(recalls) > 0.6 and ghost < 100, (score, recalls, ghost)
