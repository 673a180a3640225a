"""Evaluate through the engine: one error row per unreadable pair, the rest scored, workers or not."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrseg.checkpoint import build_model
from cxrseg.config import InferenceSettings, Settings
from cxrseg.dataset import select_pairs
from cxrseg.inference.evaluate import evaluate_model, write_csv
from tests.conftest import write_dataset


@pytest.fixture
def setup(tmp_path: Path) -> tuple[torch.nn.Module, Settings, Path]:
    data = write_dataset(tmp_path / "data", n_train=2, n_test=4)
    settings = Settings.model_validate({"preprocess": {"image_size": 32}, "model": {"base_channels": 4, "depth": 2}})
    torch.manual_seed(0)
    return build_model(settings), settings, data


def test_bad_pairs_become_error_rows_and_the_run_goes_on(setup, tmp_path: Path) -> None:
    model, settings, data = setup
    (data / "test_image" / "case_001.png").write_bytes(b"not a png")  # truncated / not an image
    Image.fromarray(np.zeros((40, 64), dtype=np.uint8)).save(data / "test_mask" / "case_002.jpeg")  # size differs
    pairs = select_pairs(data, "test")
    cfg = InferenceSettings(device="cpu", batch_size=3)
    evaluation = evaluate_model(model, settings, pairs, cfg, workers=0)
    assert [r.name for r in evaluation.rows] == ["case_000", "case_003"]
    assert [r.name for r in evaluation.failed] == ["case_001", "case_002"]
    assert "case_001.png" in evaluation.failed[0].error and "sizes differ" in evaluation.failed[1].error
    assert evaluation.summary["dice"]["n"] == 2  # failures are left out of the means
    report = evaluation.as_json()
    assert report["n_images"] == 2 and report["n_failed"] == 2 and report["failed"][0]["name"] == "case_001"
    json.dumps(report)
    write_csv(evaluation, tmp_path / "scores.csv")
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [r["error"] != "" for r in rows] == [False, False, True, True] and rows[2]["dice"] == ""


def test_the_command_names_each_pair_it_could_not_score_and_exits_1(setup, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxrseg.checkpoint import CheckpointInfo, save_checkpoint
    from cxrseg.cli.app import app

    model, settings, data = setup
    (data / "test_image" / "case_001.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((40, 64), dtype=np.uint8)).save(data / "test_mask" / "case_002.jpeg")
    save_checkpoint(tmp_path / "m.safetensors", model, CheckpointInfo(settings=settings))
    args = ["evaluate", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", str(data), "--device", "cpu"]
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(app, args + extra)
        assert result.exit_code == 1, result.output
        assert "case_001.png" in result.output and "2 of 4 pairs could not be scored" in result.output
        assert "image 64x64 px but mask" in result.output and "case_002.jpeg 64x40 px" in result.output
        if extra:  # the failures go to stderr: stdout stays one JSON document
            assert json.loads(result.stdout)["n_failed"] == 2


def test_folders_scored_on_different_splits_say_so(setup, tmp_path: Path) -> None:
    """A checkpoint trained on two folders, one without test_image/: each is scored on its own default split."""
    from typer.testing import CliRunner

    from cxrseg.checkpoint import CheckpointInfo, save_checkpoint
    from cxrseg.cli.app import app

    model, settings, data = setup
    bare = write_dataset(tmp_path / "bare", n_train=6, n_test=0)
    shutil.rmtree(bare / "test_image"), shutil.rmtree(bare / "test_mask")
    trained = settings.model_copy(update={"data": settings.data.model_copy(update={"root": [data, bare]})})
    save_checkpoint(tmp_path / "m.safetensors", model, CheckpointInfo(settings=trained))
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "m.safetensors"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["split"] == f"test of {data}, val of {bare}" and report["n_images"] == 4 + 1


def test_a_checkpoint_away_from_its_training_folder_scores_the_default_folder_here(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trained in A on A/data/chest-segmentation-image, copied to B with its own copy of the data."""
    from typer.testing import CliRunner

    from cxrseg.checkpoint import CheckpointInfo, save_checkpoint
    from cxrseg.cli.app import app

    model, settings, _ = setup
    trained = settings.model_copy(update={"data": settings.data.model_copy(update={"root": [tmp_path / "A" / "gone"]})})
    save_checkpoint(tmp_path / "m.safetensors", model, CheckpointInfo(settings=trained))
    (tmp_path / "B").mkdir()
    write_dataset(tmp_path / "B" / "data" / "chest-segmentation-image", n_train=4, n_test=3)
    monkeypatch.chdir(tmp_path / "B")
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "m.safetensors"), "--json"])
    assert result.exit_code == 0, result.output
    assert "not found here" in result.output and '"n_images": 3' in result.output


def test_worker_processes_score_exactly_as_in_process(setup) -> None:
    model, settings, data = setup
    pairs = select_pairs(data, "test")
    cfg = InferenceSettings(device="cpu", batch_size=3)
    inline = evaluate_model(model, settings, pairs, cfg, workers=0)
    pooled = evaluate_model(model, settings, pairs, cfg, workers=2)
    assert [r.name for r in pooled.rows] == [p.name for p in pairs]  # input order kept
    assert [r.scores for r in pooled.rows] == [r.scores for r in inline.rows]


def test_evaluate_csv_with_a_name_that_is_not_utf8_is_written_escaped(tmp_path: Path) -> None:
    """`evaluate --csv` crashed with UnicodeEncodeError, after scoring every image, on a file name
    that is not valid UTF-8; it is now written with the bytes escaped as \\xNN, as predictions.csv does."""
    import os

    from cxrseg.inference.evaluate import Evaluation, ImageScore
    from cxrseg.metrics import score

    name = os.fsdecode(b"case\xff.png")
    truth = np.ones((4, 4), bool)
    rows = [ImageScore(name, Path("/data/image") / name, score(truth, truth))]
    failed = [ImageScore(name, Path("/data/image") / name, None, f"/data/image/{name}: truncated file.")]
    write_csv(Evaluation(rows, {}, failed), tmp_path / "scores.csv")
    with (tmp_path / "scores.csv").open(newline="", encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert [r["name"] for r in written] == ["case\\xff.png"] * 2
    assert written[0]["image"] == "/data/image/case\\xff.png" and "case\\xff.png" in written[1]["error"]


def test_evaluate_csv_text_cells_never_start_a_formula(tmp_path: Path) -> None:
    """CSV injection: `evaluate --csv` wrote names and errors starting with = + - @ tab or CR as
    they were, so a spreadsheet ran them as formulas; they now start with a single quote."""
    from cxrseg.inference.evaluate import Evaluation, ImageScore
    from cxrseg.metrics import score

    truth = np.zeros((8, 8), bool)
    truth[2:6, 2:6] = True
    rows = [ImageScore("+cmd|' -c calc'!A0", Path("=image/x.png"), score(truth, truth))]
    failed = [ImageScore("@bad", Path("-image/y.png"), None, '=HYPERLINK("http://x") unreadable')]
    write_csv(Evaluation(rows, {}, failed), tmp_path / "scores.csv")
    with (tmp_path / "scores.csv").open(newline="", encoding="utf-8") as handle:
        cells = [value for row in csv.reader(handle) for value in row]
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert "'+cmd|' -c calc'!A0" in cells and "'=image/x.png" in cells
