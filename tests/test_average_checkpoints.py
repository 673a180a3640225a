"""scripts/average_checkpoints.py: the weighted mean of checkpoints, their shapes checked, its `val` Dice measured."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from cxrseg.assets import BUNDLED_MODEL, SAMPLE_DIR
from cxrseg.checkpoint import CheckpointInfo, build_model, load_checkpoint, save_checkpoint
from cxrseg.config import InferenceSettings, Settings
from cxrseg.dataset import select_pairs
from cxrseg.inference.evaluate import evaluate_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "average_checkpoints.py"
_spec = importlib.util.spec_from_file_location("average_checkpoints", SCRIPT)
assert _spec is not None and _spec.loader is not None
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)


@dataclass
class Done:
    returncode: int
    stderr: str


def run(*args: object) -> Done:
    """The script's command line, in this process (a fault would raise here, not hide in a subprocess)."""
    saved = sys.argv
    sys.argv = [str(SCRIPT), *map(str, args)]
    try:
        script.main()
    except SystemExit as stop:  # how the script refuses: the message is what a shell would show on stderr
        if stop.code in (None, 0):
            return Done(0, "")
        return Done(1, f"{stop.code}\n")
    finally:
        sys.argv = saved
    return Done(0, "")


def tiny(path: Path, seed: int, channels: int = 4, size: int = 32, steps: int = 1, **data: object) -> None:
    shape = {"model": {"base_channels": channels, "depth": 2}, "preprocess": {"image_size": size}, "data": data}
    settings = Settings.model_validate(shape)
    torch.manual_seed(seed)
    model = build_model(settings)
    for _ in range(steps):  # batch-norm statistics and step counts of their own
        model(torch.randn(4, 1, size, size))
    save_checkpoint(path, model.eval(), CheckpointInfo(settings=settings, epoch=seed, trained_on={f"{seed:08x}"}))


def test_the_average_is_the_weighted_mean_of_every_float_tensor(tmp_path: Path) -> None:
    tiny(tmp_path / "a.safetensors", 1)
    tiny(tmp_path / "b.safetensors", 2, steps=5)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    out = tmp_path / "c.safetensors"
    done = run(tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--weights", 3, 1, "--out", out)
    assert done.returncode == 0, done.stderr
    c = load_file(str(out))
    assert c.keys() == a.keys()
    for key, value in c.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * a[key] + 0.25 * b[key])
        else:  # batch-norm step counts: the first input's, not a mean (1 and 5 here)
            assert not torch.equal(a[key], b[key]) and torch.equal(value, a[key])
    assert any(k.endswith("running_mean") for k in c)  # the statistics are averaged, not only the weights
    _, info = load_checkpoint(out)
    assert info.metrics["average_weights"] == [0.75, 0.25] and info.metrics["average_epochs"] == [1, 2]
    assert len(info.metrics["average_of"]) == 2 and info.epoch == 1
    assert info.trained_on == {"00000001", "00000002"}  # what either learnt is never its `val`


@pytest.mark.parametrize(
    ("other", "named"),
    [
        ({"channels": 8}, "model settings differ"),
        ({"size": 64}, "preprocess settings differ"),
        ({"split_seed": 7}, "train/val split settings differ"),
        ({"val_fraction": 0.3}, "train/val split settings differ"),
    ],
)
def test_checkpoints_of_another_kind_are_refused(tmp_path: Path, other: dict[str, object], named: str) -> None:
    """Another shape cannot be averaged; another split rule would make the average's `val` partly seen."""
    tiny(tmp_path / "a.safetensors", 1)
    tiny(tmp_path / "b.safetensors", 2, **other)
    done = run(tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--out", tmp_path / "c.safetensors")
    assert done.returncode != 0 and named in done.stderr, done.stderr
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("weights", [["nan", "1"], ["inf", "1"], ["-1", "2"], ["0", "0"], ["1"], ["1e308", "1e308"]])
def test_weights_that_make_no_mean_are_refused(tmp_path: Path, weights: list[str]) -> None:
    tiny(tmp_path / "a.safetensors", 1)
    tiny(tmp_path / "b.safetensors", 2)
    args = (tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--weights", *weights)
    done = run(*args, "--out", tmp_path / "c.safetensors")
    assert done.returncode != 0 and "weight" in done.stderr, done.stderr
    assert not (tmp_path / "c.safetensors").exists()


def test_an_input_is_never_the_output_by_any_spelling(tmp_path: Path) -> None:
    tiny(tmp_path / "a.safetensors", 1)
    tiny(tmp_path / "b.safetensors", 2)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "a.safetensors")
    os.link(tmp_path / "a.safetensors", tmp_path / "hard.safetensors")  # no path spelling tells this one apart
    before = (tmp_path / "a.safetensors").read_bytes()
    spellings = ["a.safetensors", "sub/../a.safetensors", "link.safetensors", "hard.safetensors"]
    for out in (tmp_path / name for name in spellings):
        done = run(tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--out", out)
        assert done.returncode != 0 and "one of the inputs" in done.stderr, (out, done.stderr)
    assert (tmp_path / "a.safetensors").read_bytes() == before


def test_a_data_folder_without_pairs_is_one_line_before_any_work(tmp_path: Path) -> None:
    """The folder is checked before the weights are read: with checkpoints that could not be averaged either,
    the error names the folder, not the checkpoints."""
    tiny(tmp_path / "a.safetensors", 1)
    tiny(tmp_path / "b.safetensors", 2, channels=8)
    (tmp_path / "empty").mkdir()
    args = (tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--data", tmp_path / "empty")
    done = run(*args, "--out", tmp_path / "c.safetensors")
    assert done.returncode != 0 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert str(tmp_path / "empty") in done.stderr and "settings differ" not in done.stderr, done.stderr
    assert not (tmp_path / "c.safetensors").exists()


def test_the_recorded_val_dice_uses_the_checkpoints_own_inference_settings(tmp_path: Path) -> None:
    """A checkpoint whose threshold is not the default is scored at its own threshold, as training scores it."""
    data = tmp_path / "data"
    for folder in ("image", "mask"):
        (data / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(data / "image" / f"{i:02}.png")
        mask = np.zeros((40, 40), np.uint8)
        mask[8:32, 4 + i % 5 : 18] = 255
        mask[8:32, 22 : 36 - i % 5] = 255
        Image.fromarray(mask).save(data / "mask" / f"{i:02}.png")
    shape = {"model": {"base_channels": 4, "depth": 2}, "preprocess": {"image_size": 32}}
    settings = Settings.model_validate(shape | {"inference": {"threshold": 0.2, "postprocess": False}})
    torch.manual_seed(0)
    model = build_model(settings)
    for path in ("a.safetensors", "b.safetensors"):
        save_checkpoint(tmp_path / path, model.eval(), CheckpointInfo(settings=settings))
    out = tmp_path / "c.safetensors"
    done = run(tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--data", data, "--out", out)
    assert done.returncode == 0, done.stderr
    with safe_open(str(out), framework="pt") as handle:
        recorded = json.loads(handle.metadata()["metrics"])["val_dice"]
    pairs = select_pairs(data, "val", settings.data.val_fraction, settings.data.split_seed)
    own = evaluate_model(model, settings, pairs, settings.inference.model_copy(update={"device": "cpu"}))
    default = evaluate_model(model, settings, pairs, InferenceSettings(device="cpu"))
    assert recorded == pytest.approx(own.summary["dice"]["mean"], abs=1e-9)
    assert abs(recorded - default.summary["dice"]["mean"]) > 1e-3  # the setting makes a difference here


@pytest.mark.slow  # the bundled model over the sample's `val` films and a cxrseg evaluate subprocess
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
