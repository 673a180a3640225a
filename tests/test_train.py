"""Training you can trust: resume after SIGKILL/SIGTERM, determinism, patience, time budget, NaN, corruption."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cxrseg.checkpoint import load_checkpoint
from cxrseg.config import Settings
from cxrseg.errors import CheckpointError, TrainingError
from cxrseg.training import loop as train_module
from cxrseg.training.loop import train
from tests.conftest import tiny_args, tiny_config, write_dataset

pytestmark = pytest.mark.slow  # every test here trains, most in subprocesses

SLOW_RUNNER = """
import sys, time
import cxrseg.training.loop as t
delay = float(sys.argv[1])
original = t.segmentation_loss
def slow(*args, **kwargs):
    time.sleep(delay)
    return original(*args, **kwargs)
t.segmentation_loss = slow
from cxrseg.cli import main
sys.argv = ["cxrseg", *sys.argv[2:]]
main()
"""


def checkout_env() -> dict[str, str]:
    """The environment with this checkout first on the path, so children run the code under test."""
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def start_cli(tmp_path: Path, args: list[str], delay: float = 0.0) -> subprocess.Popen:
    """`cxrseg ARGS` in the background, each training step slowed by `delay` s; read it with communicate()."""
    script = tmp_path / "slow_runner.py"
    script.write_text(SLOW_RUNNER)
    return subprocess.Popen(
        [sys.executable, str(script), str(delay), *args],
        cwd=tmp_path,
        env=checkout_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    script = tmp_path / "slow_runner.py"
    script.write_text(SLOW_RUNNER)
    return subprocess.run(
        [sys.executable, str(script), "0", *args],
        cwd=tmp_path,
        env=checkout_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def wait_for_epoch(run_parent: Path, epoch: int, timeout: float = 60) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for metrics in run_parent.glob("*/metrics.jsonl"):
            lines = metrics.read_text().splitlines()
            if len(lines) >= epoch and (metrics.parent / "state.safetensors").is_file():
                return metrics.parent
        time.sleep(0.02)
    raise AssertionError("training did not reach the epoch in time")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", n_train=24, n_test=4)


def test_deterministic_runs_are_bit_identical(tmp_path: Path, data: Path) -> None:
    for name in ("a", "b"):
        result = run_cli(tmp_path, tiny_args(data, tmp_path / name, epochs=2))
        assert result.returncode == 0, result.stderr
    assert_same_weights(next((tmp_path / "a").iterdir()), next((tmp_path / "b").iterdir()))


def test_sigkill_in_epoch_two_then_resume_matches_uninterrupted(tmp_path: Path, data: Path) -> None:
    reference = run_cli(tmp_path, tiny_args(data, tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr

    with start_cli(tmp_path, tiny_args(data, tmp_path / "killed"), delay=0.1) as victim:
        run = wait_for_epoch(tmp_path / "killed", 1)
        time.sleep(0.25)  # into epoch 2 (6 steps of >= 0.1 s each)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # killed during epoch 2
    assert not list(run.glob(".*.tmp"))  # no half-written file under its final name

    resumed = run_cli(tmp_path, ["train", "--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert_same_weights(run, next((tmp_path / "ref").iterdir()))


def test_sigterm_saves_mid_epoch_state_and_resume_is_exact(tmp_path: Path, data: Path) -> None:
    reference = run_cli(tmp_path, tiny_args(data, tmp_path / "ref"))
    with start_cli(tmp_path, tiny_args(data, tmp_path / "term"), delay=0.1) as victim:
        run = wait_for_epoch(tmp_path / "term", 1)
        time.sleep(0.25)
        victim.send_signal(signal.SIGTERM)
        _, stderr = victim.communicate(timeout=60)
    assert victim.returncode == 143, stderr
    assert "--resume" in stderr and str(run) in stderr.replace("\n", "")
    resumed = run_cli(tmp_path, ["train", "--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    assert reference.returncode == 0
    assert_same_weights(run, next((tmp_path / "ref").iterdir()))


def test_ctrl_c_exits_130_with_the_resume_command(tmp_path: Path, data: Path) -> None:
    runs = tmp_path / "int runs"  # the printed command must survive a space when pasted into a shell
    with start_cli(tmp_path, tiny_args(data, runs), delay=0.1) as victim:
        run = wait_for_epoch(runs, 1)
        victim.send_signal(signal.SIGINT)
        _, stderr = victim.communicate(timeout=60)
    assert victim.returncode == 130, stderr
    assert "Ctrl-C" in stderr and "--resume" in stderr and "Traceback" not in stderr
    command = shlex.split(" ".join(stderr.split("Resume with:", 1)[1].split()))
    assert command == ["cxrseg", "train", "--resume", str(run)]
    resumed = run_cli(tmp_path, command[1:])
    assert resumed.returncode == 0, resumed.stderr


def tiny_settings(tmp_path: Path, data: Path, **train: object) -> Settings:
    return tiny_config(tmp_path / "runs", data, **{"epochs": 5, **train})


def test_patience_stops_early(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dice = iter([0.5, 0.6, 0.55, 0.58, 0.9])
    monkeypatch.setattr(train_module, "validate", lambda *a, **k: (next(dice), 0.4, {}, []))
    result = train(tiny_settings(tmp_path, data, patience=2))
    assert result.epochs_run == 4 and result.best_epoch == 2 and "early stop" in result.stop_reason


def test_max_time_stops_after_the_epoch(tmp_path: Path, data: Path) -> None:
    result = train(tiny_settings(tmp_path, data, max_time="0.001s"))
    assert result.epochs_run == 1 and "time budget" in result.stop_reason
    assert (result.run_dir / "progress.png").is_file()
    env = json.loads((result.run_dir / "environment.json").read_text())
    assert env["world_size"] == 1 and env["torch"] == torch.__version__


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, data: Path, monkeypatch) -> None:
    original, calls = train_module.segmentation_loss, {"n": 0}

    def poisoned(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 8 else loss  # epoch 1 has 6 steps

    monkeypatch.setattr(train_module, "segmentation_loss", poisoned)
    with pytest.raises(TrainingError, match="Loss became nan at epoch 2, step 3"):
        train(tiny_settings(tmp_path, data))
    (run,) = (tmp_path / "runs").iterdir()
    _, info = load_checkpoint(run / "last.safetensors")
    assert info.epoch == 1


def test_corrupt_state_falls_back_then_fails_clearly(tmp_path: Path, data: Path) -> None:
    result = train(tiny_settings(tmp_path, data, epochs=2))
    state, previous = result.run_dir / "state.safetensors", result.run_dir / "state.prev.safetensors"
    assert previous.is_file()
    state.write_bytes(state.read_bytes()[:1000])
    resumed = train(tiny_settings(tmp_path, data, epochs=3), resume_dir=result.run_dir)
    assert resumed.epochs_run == 3  # resumed from the previous good state (after epoch 1)
    state.write_bytes(b"garbage")
    previous.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="state.safetensors is truncated or corrupt"):
        train(tiny_settings(tmp_path, data, epochs=4), resume_dir=result.run_dir)


@pytest.mark.slow
def test_item3_full_disk_keeps_the_state_resumable(tmp_path: Path, data: Path, monkeypatch) -> None:
    from safetensors import SafetensorError

    import cxrseg.checkpoint as checkpoint
    from cxrseg.errors import OutputError
    from cxrseg.state_file import load_state
    from cxrseg.training.state import STATE_FILE

    real, calls = checkpoint.save_file, {"n": 0}

    def filling(tensors, filename, metadata=None) -> None:
        calls["n"] += 1
        if calls["n"] > 3:  # epoch 1 writes last, best and state; the disk is full from epoch 2 on
            Path(filename).write_bytes(b"half")
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", filling)
    with pytest.raises(OutputError, match="cannot write .*StorageFull.*; free some space") as caught:
        train(tiny_settings(tmp_path, data, epochs=3))
    assert "\n" not in str(caught.value)
    (run,) = (tmp_path / "runs").iterdir()
    assert not list(run.glob(".*.tmp"))
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert load_state(run / STATE_FILE)[0]["position"]["epochs_done"] == 1
    resumed = train(tiny_settings(tmp_path, data, epochs=2), resume_dir=run)
    assert resumed.epochs_run == 2


def test_a_second_train_of_a_running_run_stops_at_once(tmp_path: Path, data: Path) -> None:
    with start_cli(tmp_path, tiny_args(data, tmp_path / "busy", epochs=100), delay=0.1) as first:
        run = wait_for_epoch(tmp_path / "busy", 1)
        second = run_cli(tmp_path, ["train", "--resume", str(run)])
        still_running = first.poll() is None
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    assert still_running and first.returncode == 143, stderr  # the first run went on, undisturbed
    assert second.returncode == 1 and f"{run} is in use by another `cxrseg train`" in " ".join(second.stderr.split())
    assert "Epoch" not in second.stdout


def test_hard_pixel_fraction_reaches_the_loss(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, fractions = train_module.segmentation_loss, []

    def spy(*args: object) -> torch.Tensor:
        fractions.append(args[4])
        return real(*args)

    monkeypatch.setattr(train_module, "segmentation_loss", spy)
    train(tiny_settings(tmp_path, data, epochs=1, hard_pixel_fraction=0.25))
    assert fractions and set(fractions) == {0.25}
