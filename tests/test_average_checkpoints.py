"""scripts/average_checkpoints.py: the weighted mean of checkpoints, their shapes checked, its `val` Dice measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cxrseg.assets import BUNDLED_MODEL, SAMPLE_DIR
from cxrseg.checkpoint import CheckpointInfo, build_model, load_checkpoint, save_checkpoint
from cxrseg.config import Settings

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "average_checkpoints.py"


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, check=False)


def tiny(path: Path, seed: int, channels: int = 4) -> dict[str, torch.Tensor]:
    shape = {"model": {"base_channels": channels, "depth": 2}, "preprocess": {"image_size": 32}}
    settings = Settings.model_validate(shape)
    torch.manual_seed(seed)
    model = build_model(settings)
    model(torch.randn(4, 1, 32, 32))  # batch-norm statistics of their own
    save_checkpoint(path, model.eval(), CheckpointInfo(settings=settings, epoch=seed))
    return load_file(str(path))


def test_the_average_is_the_weighted_mean_of_every_float_tensor(tmp_path: Path) -> None:
    a, b = tiny(tmp_path / "a.safetensors", 1), tiny(tmp_path / "b.safetensors", 2)
    out = tmp_path / "c.safetensors"
    done = run(tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--weights", 3, 1, "--out", out)
    assert done.returncode == 0, done.stderr
    c = load_file(str(tmp_path / "c.safetensors"))
    assert c.keys() == a.keys()
    for key, value in c.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * a[key] + 0.25 * b[key])
        else:
            assert torch.equal(value, a[key])
    assert any(k.endswith("running_mean") for k in c)  # the statistics are averaged, not only the weights
    model, info = load_checkpoint(tmp_path / "c.safetensors")
    assert info.metrics["average_weights"] == [0.75, 0.25] and len(info.metrics["average_of"]) == 2


def test_different_shapes_and_an_input_as_output_are_refused(tmp_path: Path) -> None:
    tiny(tmp_path / "a.safetensors", 1)
    tiny(tmp_path / "wide.safetensors", 2, channels=8)
    done = run(tmp_path / "a.safetensors", tmp_path / "wide.safetensors", "--out", tmp_path / "c.safetensors")
    assert done.returncode != 0 and "model settings differ" in done.stderr
    assert not (tmp_path / "c.safetensors").exists()
    before = (tmp_path / "a.safetensors").read_bytes()
    done = run(tmp_path / "a.safetensors", tmp_path / "a.safetensors", "--out", tmp_path / "a.safetensors")
    assert done.returncode != 0 and "one of the inputs" in done.stderr
    assert (tmp_path / "a.safetensors").read_bytes() == before


@pytest.mark.slow  # the bundled model over the sample's `val` films
def test_the_recorded_val_dice_is_what_cxrseg_evaluate_measures(tmp_path: Path) -> None:
    """The bundled model averaged with itself is itself; the Dice recorded is cxrseg evaluate's on `val`."""
    out = tmp_path / "same.safetensors"
    done = run(BUNDLED_MODEL, BUNDLED_MODEL, "--data", SAMPLE_DIR, "--out", out)
    assert done.returncode == 0, done.stderr
    torch.testing.assert_close(load_file(str(out)), load_file(str(BUNDLED_MODEL)), rtol=0, atol=1e-7)
    with safe_open(str(out), framework="pt") as handle:
        recorded = json.loads(handle.metadata()["metrics"])
    cli = [sys.executable, "-m", "cxrseg", "evaluate", "--checkpoint", out, "--data", SAMPLE_DIR, "--split", "val"]
    scored = subprocess.run([*map(str, cli), "--json"], capture_output=True, text=True, check=True)
    measured = json.loads(scored.stdout)
    assert measured["n_images"] >= 1 and recorded["split"] == "val"
    assert recorded["val_dice"] == pytest.approx(measured["dice"], abs=1e-6) and recorded["val_dice"] > 0.9
