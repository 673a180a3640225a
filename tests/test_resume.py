"""Resuming a run folder: one `cxrseg train` at a time, a kill before the first saved epoch, and tiny datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cxrseg.checkpoint import build_model
from cxrseg.config import Settings
from cxrseg.errors import CheckpointError, DataError, TrainingError
from cxrseg.training.data import load_training_data
from cxrseg.training.loop import train
from cxrseg.training.state import Position, load_resume_state, lock_run
from tests.conftest import tiny_config, write_dataset


def tiny_settings(tmp_path: Path, data: Path, **train: object) -> Settings:
    return tiny_config(tmp_path / "runs", data, **{"epochs": 1, **train})


def test_a_run_folder_in_use_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, write_dataset(tmp_path / "data", n_train=4, n_test=1))
    run = tmp_path / "runs" / "busy"
    run.mkdir(parents=True)
    (run / "settings.json").write_text(settings.model_dump_json())
    busy = pytest.raises(TrainingError, match=rf"{run} is in use by another `cxrseg train`")
    with lock_run(run), busy as caught:  # the lock: what a running `cxrseg train` holds
        train(settings, resume_dir=run)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "settings.json"]  # nothing rewritten or trimmed
    with lock_run(run), pytest.raises(TrainingError), lock_run(run):
        pass  # a lock belongs to an open file: a second holder in the same process is refused too
    with lock_run(run):
        pass  # released at the end of the block
    with pytest.raises(CheckpointError, match="missing not found; --resume takes a run folder"):
        train(settings, resume_dir=tmp_path / "missing")


def test_a_run_killed_before_its_first_saved_epoch_resumes_from_the_start(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, tmp_path / "data")
    run = tmp_path / "runs" / "killed"
    run.mkdir(parents=True)
    for name, text in (("settings.json", settings.model_dump_json()), ("environment.json", "{}")):
        (run / name).write_text(text)  # what `cxrseg train` writes before its first step
    model = build_model(settings)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    position, generator_state, note = load_resume_state(run, model, optimizer, scheduler)
    assert position == Position() and generator_state is None
    assert "No epoch of" in note and "starting it from the beginning" in note
    (run / "settings.json").unlink()
    with pytest.raises(CheckpointError, match="needs a run folder written by `cxrseg train`"):
        load_resume_state(run, model, optimizer, scheduler)  # a folder that never was a run


@pytest.mark.parametrize("n_pairs", [1, 2])
def test_one_or_two_pairs_give_one_rule(tmp_path: Path, n_pairs: int) -> None:
    data = write_dataset(tmp_path / "data", n_train=n_pairs, n_test=1)
    with pytest.raises(DataError) as caught:
        load_training_data(tiny_settings(tmp_path, data))
    message = str(caught.value)
    assert f"{n_pairs} pair{'s' if n_pairs > 1 else ''}" in message
    assert "training needs 3 pairs or more: 2 to train on and 1 to validate" in message


def test_three_pairs_are_enough_to_train(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", n_train=3, n_test=1)
    loaded = load_training_data(tiny_settings(tmp_path, data))
    assert (len(loaded.train.pairs), loaded.n_val) == (2, 1)


@pytest.mark.slow
def test_a_run_killed_in_its_first_epoch_resumes_to_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cxrseg.training.loop as loop

    settings = tiny_settings(tmp_path, write_dataset(tmp_path / "data", n_train=8, n_test=1), epochs=2)
    real = loop.segmentation_loss

    def killed(*args: object, **kwargs: object) -> None:
        raise SystemExit(137)  # dies without the state a Ctrl-C or SIGTERM would save

    monkeypatch.setattr(loop, "segmentation_loss", killed)
    with pytest.raises(SystemExit):
        train(settings)
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "state.safetensors").exists()
    monkeypatch.setattr(loop, "segmentation_loss", real)
    result = train(settings, resume_dir=run)
    assert result.epochs_run == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
