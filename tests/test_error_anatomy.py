"""The error-anatomy benchmark: wrong pixels binned by distance from the outline, large disagreements located."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def anatomy_module():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling `common`
    try:
        spec = importlib.util.spec_from_file_location("error_anatomy", BENCHMARKS / "error_anatomy.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def two_lungs() -> np.ndarray:
    """Image left: the patient's right lung (cols 20-89); image right: the left lung (cols 110-179); rows 40-159."""
    truth = np.zeros((200, 200), dtype=bool)
    truth[40:160, 20:90] = True
    truth[40:160, 110:180] = True
    return truth


def test_an_outline_drawn_two_pixels_inside_is_near_error_and_no_disagreement(anatomy_module) -> None:
    truth = two_lungs()
    pred = truth.copy()
    pred[40:160, 20:22] = False  # the right lung's lateral edge, 2 px in
    film = anatomy_module.anatomy("x", truth, pred, chunk_px=50)
    assert film.fn_bins.tolist() == [240, 0, 0, 0, 0] and film.fp_bins.sum() == 0
    assert film.chunks == []  # thin, however long
    assert film.dice_chunks_right == film.dice < 1


def test_missed_lung_behind_the_heart_is_a_located_disagreement(anatomy_module) -> None:
    truth = two_lungs()
    pred = truth.copy()
    pred[120:160, 110:140] = False  # lower medial part of the patient's left lung
    pred[165:195, 150:175] = True  # a bubble under the left lung, 5-35 px below it
    film = anatomy_module.anatomy("x", truth, pred, chunk_px=500)
    assert sorted((c.kind, c.pixels, c.where) for c in film.chunks) == [
        ("FN", 1200, "left lower medial"),
        ("FP", 750, "left below lateral"),
    ]
    assert film.fn_bins.sum() == 1200 and film.fp_bins[0] == 0 and film.fp_bins[-1] > 0
    assert film.dice < 0.97 and film.dice_chunks_right == 1.0


def test_a_small_disagreement_is_left_to_the_bins(anatomy_module) -> None:
    truth = two_lungs()
    pred = truth.copy()
    pred[120:140, 110:130] = False  # 400 px
    assert anatomy_module.anatomy("x", truth, pred, chunk_px=500).chunks == []
    assert [c.pixels for c in anatomy_module.anatomy("x", truth, pred, chunk_px=100).chunks] == [400]


def test_ignore_masks_cover_missed_convention_regions_only(anatomy_module) -> None:
    truth = two_lungs()
    pred = truth.copy()
    pred[120:160, 110:140] = False  # missed behind the heart: the minority convention
    pred[40:70, 20:60] = False  # missed at the right apex: not a convention, stays in the loss
    pred[165:195, 150:175] = True  # an added bubble: the expert's "not lung" stays in the loss
    found = anatomy_module.disagreements(truth, pred, chunk_px=500)
    ignore = anatomy_module.ignore_mask(found, truth.shape, where=anatomy_module.CONVENTION)
    missed = np.zeros_like(truth)
    missed[120:160, 110:140] = True
    margin = anatomy_module.IGNORE_MARGIN
    assert ignore[missed].all() and ignore.sum() > missed.sum()  # the region and its band
    assert not ignore[: 120 - margin - 1].any() and not ignore[165:].any()
    assert not anatomy_module.ignore_mask(found, truth.shape, where=["left upper lateral"]).any()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--split", "train", "--ignore-where", "left lower medial,lfet lower medial"], "'lfet lower medial'"),
        (["--split", "val"], "training films only; use --split train"),
    ],
)
def test_ignore_masks_are_refused_for_a_misspelt_place_or_another_split(tmp_path: Path, flags, message) -> None:
    script = BENCHMARKS / "error_anatomy.py"
    args = [sys.executable, str(script), str(tmp_path / "x.safetensors"), "--ignore-dir", str(tmp_path / "i"), *flags]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode != 0 and message in done.stderr and not (tmp_path / "i").exists()


@pytest.mark.parametrize(("existing", "message"), [("file", "is a file"), ("folder", "is not empty")])
def test_ignore_masks_are_never_written_over_or_beside_old_ones(tmp_path: Path, existing: str, message: str) -> None:
    target = tmp_path / "i"
    if existing == "file":
        target.write_text("x")
    else:
        target.mkdir()
        (target / "CHNCXR_0001_0.png").write_bytes(b"old")
    args = [sys.executable, str(BENCHMARKS / "error_anatomy.py"), str(tmp_path / "x.safetensors")]
    done = subprocess.run([*args, "--split", "train", "--ignore-dir", str(target)], capture_output=True, text=True)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
