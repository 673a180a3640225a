"""torchrun with two gloo processes on the CPU: one set of checkpoints, validation reduced across ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxrseg.checkpoint import load_checkpoint
from cxrseg.config import InferenceSettings
from cxrseg.dataset import select_pairs
from cxrseg.inference.evaluate import evaluate_model
from tests.conftest import tiny_args, write_dataset


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", n_train=16, n_test=2)
    runs = tmp_path / "runs"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    # no augmentation and a high learning rate: the tiny model finds some lung within 2 epochs
    flags = ["--device", "cpu", "--precision", "fp32", "--no-augment", "--lr", "0.05"]
    command = [*torchrun, "cxrseg", *tiny_args(data, runs, epochs=2), *flags]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        # 5 of the 16 image/ pairs validate (the `name` rule at 0.25): an odd count, so the two ranks hold shards
        # of 3 and 2
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "CXRSEG_DATA__VAL_FRACTION": "0.25"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs.iterdir()  # exactly one run folder
    assert sorted(p.name for p in run.glob("*.safetensors")) == [
        "best.safetensors",
        "last.safetensors",
        "state.prev.safetensors",
        "state.safetensors",
    ]
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]  # only rank 0 logs

    model, info = load_checkpoint(run / "last.safetensors")
    val = select_pairs(data, "val", info.settings.data.val_fraction, info.settings.data.split_seed)
    assert len(val) == 5
    single = evaluate_model(model, info.settings, val, InferenceSettings(device="cpu"))
    assert lines[-1]["val_dice"] > 0.05  # a model that finds some lung: 0 == 0 would prove nothing
    assert single.summary["dice"]["mean"] == pytest.approx(lines[-1]["val_dice"], abs=1e-9)
