"""train.ema_decay: the checkpoints hold a moving average of the weights, and a stopped run resumes it exactly."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel

from cxrseg.checkpoint import load_checkpoint
from cxrseg.config import InferenceSettings
from cxrseg.dataset import select_pairs
from cxrseg.errors import TrainingInterrupted
from cxrseg.inference.evaluate import evaluate_model
from cxrseg.training import loop
from cxrseg.training.loop import train
from cxrseg.training.setup import moving_average_note
from tests.conftest import tiny_config, write_dataset

pytestmark = pytest.mark.slow  # each test trains a tiny U-Net in process


def settings_for(tmp_path: Path, runs: str, **train: object):
    data = tmp_path / "data"
    if not data.is_dir():
        write_dataset(data, n_train=14, n_test=1)
    return tiny_config(tmp_path / runs, data, epochs=2, deterministic=True, **train)


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def test_the_checkpoints_hold_the_moving_average_of_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[dict[str, torch.Tensor]] = []
    update = AveragedModel.update_parameters

    def record(self: AveragedModel, model: torch.nn.Module) -> None:
        steps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        update(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", record)
    decay = 0.6
    result = train(settings_for(tmp_path, "runs", ema_decay=decay))
    run = result.run_dir
    scheduler = json.loads(metadata(run / "state.safetensors")["extra"])["scheduler"]
    assert len(steps) == scheduler["last_epoch"] == 6  # one update per optimiser step: 2 epochs of 3 steps

    averages = [dict(steps[0])]  # the first step is copied, each later one blended in; counts are copied
    for weights in steps[1:]:
        averages.append(
            {k: decay * averages[-1][k] + (1 - decay) * w if w.is_floating_point() else w for k, w in weights.items()}
        )
    expected = averages[-1]
    saved = load_file(str(run / "last.safetensors"))
    state = load_file(str(run / "state.safetensors"))
    floats = [k for k, v in expected.items() if v.is_floating_point()]
    assert any("running_mean" in k for k in floats)  # batch-norm statistics are averaged too
    for key in floats:
        torch.testing.assert_close(saved[key].float(), expected[key], rtol=1e-5, atol=1e-6)
    counts = [k for k in expected if k.endswith("num_batches_tracked")]
    assert counts and all(int(saved[k]) == int(steps[-1][k]) == 6 for k in counts)

    _, best = load_checkpoint(run / "best.safetensors")  # the best epoch's average, not its raw weights
    best_saved = load_file(str(run / "best.safetensors"))
    for key in floats:
        torch.testing.assert_close(best_saved[key].float(), averages[3 * best.epoch - 1][key], rtol=1e-5, atol=1e-6)

    model, info = load_checkpoint(run / "last.safetensors")  # validation scored the average
    val = select_pairs(tmp_path / "data", "val", info.settings.data.val_fraction, info.settings.data.split_seed)
    scored = evaluate_model(model, info.settings, val, InferenceSettings(device="cpu")).summary["dice"]["mean"]
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val_dice"]
    assert scored == pytest.approx(logged, abs=1e-9)
    raw = {k.removeprefix("extra.model."): v for k, v in state.items() if k.startswith("extra.model.")}
    for key in floats:  # the optimiser trains the raw weights; the checkpoint is not them
        torch.testing.assert_close(raw[key], steps[-1][key])
    assert any(not torch.equal(saved[k], raw[k]) for k in floats if "weight" in k)


def test_a_decay_too_slow_for_the_run_is_named() -> None:
    assert "92%" in moving_average_note(0.999, 87)  # the default 3 epochs of 29 steps: the start still dominates
    assert moving_average_note(0.99, 580) == ""  # 20 epochs at 0.99: the start weighs 0.3 %
    assert moving_average_note(0.0, 10) == ""


def test_without_a_decay_the_checkpoints_hold_the_trained_weights(tmp_path: Path) -> None:
    result = train(settings_for(tmp_path, "runs"))
    saved = load_file(str(result.run_dir / "last.safetensors"))
    state = load_file(str(result.run_dir / "state.safetensors"))
    assert not any(k.startswith("extra.ema") for k in state)
    for key, value in saved.items():
        assert torch.equal(value, state[f"extra.model.{key}"])


def test_a_stopped_run_resumes_its_moving_average_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = train(settings_for(tmp_path, "ref", ema_decay=0.6))

    real, calls = loop.segmentation_loss, []

    def stop_at_step_five(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 5:  # in epoch two: the average has history the resume must carry
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    settings = settings_for(tmp_path, "stopped", ema_decay=0.6)
    monkeypatch.setattr(loop, "segmentation_loss", stop_at_step_five)
    with pytest.raises(TrainingInterrupted):
        train(settings)
    monkeypatch.setattr(loop, "segmentation_loss", real)
    (run,) = (tmp_path / "stopped").iterdir()
    train(settings, resume_dir=run)
    expected = load_file(str(reference.run_dir / "last.safetensors"))
    resumed = load_file(str(run / "last.safetensors"))
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
