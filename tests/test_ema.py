"""train.ema_decay: the checkpoints hold a moving average of the weights, and a stopped run resumes it exactly."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel

from cxrseg.errors import TrainingInterrupted
from cxrseg.training import loop
from cxrseg.training.loop import train
from tests.conftest import tiny_config, write_dataset

pytestmark = pytest.mark.slow  # each test trains a tiny U-Net in process


def settings_for(tmp_path: Path, runs: str, **train: object):
    data = tmp_path / "data"
    if not data.is_dir():
        write_dataset(data, n_train=14, n_test=1)
    return tiny_config(tmp_path / runs, data, epochs=2, deterministic=True, **train)


def test_the_checkpoints_hold_the_moving_average_of_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[dict[str, torch.Tensor]] = []
    update = AveragedModel.update_parameters

    def record(self: AveragedModel, model: torch.nn.Module) -> None:
        steps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        update(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", record)
    decay = 0.6
    result = train(settings_for(tmp_path, "runs", ema_decay=decay))
    assert len(steps) >= 4  # two epochs of a few steps each

    expected = dict(steps[0])  # the first step is copied, each later one blended in
    for weights in steps[1:]:
        expected = {
            k: decay * expected[k] + (1 - decay) * w if w.is_floating_point() else w for k, w in weights.items()
        }
    saved = load_file(str(result.run_dir / "last.safetensors"))
    state = load_file(str(result.run_dir / "state.safetensors"))
    floats = [k for k, v in expected.items() if v.is_floating_point()]
    assert any("running_mean" in k for k in floats)  # batch-norm statistics are averaged too
    for key in floats:
        torch.testing.assert_close(saved[key].float(), expected[key], rtol=1e-5, atol=1e-6)
    raw = {k.removeprefix("extra.model."): v for k, v in state.items() if k.startswith("extra.model.")}
    for key in floats:  # the optimiser trains the raw weights; the checkpoint is not them
        torch.testing.assert_close(raw[key], steps[-1][key])
    assert any(not torch.equal(saved[k], raw[k]) for k in floats if "weight" in k)


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
