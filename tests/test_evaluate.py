"""Evaluate through the engine: one error row per unreadable pair, the rest scored, workers or not."""

from __future__ import annotations

import csv
import json
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


def test_worker_processes_score_exactly_as_in_process(setup) -> None:
    model, settings, data = setup
    pairs = select_pairs(data, "test")
    cfg = InferenceSettings(device="cpu", batch_size=3)
    inline = evaluate_model(model, settings, pairs, cfg, workers=0)
    pooled = evaluate_model(model, settings, pairs, cfg, workers=2)
    assert [r.name for r in pooled.rows] == [p.name for p in pairs]  # input order kept
    assert [r.scores for r in pooled.rows] == [r.scores for r in inline.rows]
