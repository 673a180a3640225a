"""Self-describing checkpoints: round trips, corruption, prefixes, optimizer state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cxrseg.checkpoint import CheckpointInfo, build_model, load_checkpoint, load_state, save_checkpoint, save_state
from cxrseg.config import Settings
from cxrseg.errors import CheckpointError
from cxrseg.training.state import Position


@pytest.fixture
def settings() -> Settings:
    return Settings.model_validate({"model": {"base_channels": 4, "depth": 2}, "preprocess": {"image_size": 32}})


def test_round_trip_gives_identical_logits(tmp_path: Path, settings: Settings) -> None:
    torch.manual_seed(0)
    model = build_model(settings)
    model(torch.randn(4, 1, 32, 32))  # move batch-norm statistics away from their defaults
    model.eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, CheckpointInfo(settings=settings, epoch=7, metrics={"val_dice": 0.9}))
    loaded, info = load_checkpoint(path)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert info.settings == settings and info.epoch == 7 and info.metrics == {"val_dice": 0.9}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


class DataParallelLike(torch.nn.Module):
    """Holds the model as `.module`, as DistributedDataParallel does: its state_dict keys start with 'module.'."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.module = model


@pytest.mark.parametrize("wrap", [DataParallelLike, torch.compile, lambda m: DataParallelLike(torch.compile(m))])
def test_wrapped_models_are_saved_under_the_plain_key_names(tmp_path: Path, settings: Settings, wrap) -> None:
    """The file itself holds the bare names (read raw: load_checkpoint would strip prefixes and hide a bug)."""
    model = build_model(settings)
    wrapped = wrap(model)
    assert any(key.startswith(("module.", "_orig_mod.")) for key in wrapped.state_dict())  # the wrapper adds them
    save_checkpoint(tmp_path / "m.safetensors", wrapped, CheckpointInfo(settings=settings))
    saved = load_file(str(tmp_path / "m.safetensors"))
    assert set(saved) == set(model.state_dict())
    assert all(torch.equal(saved[key], value) for key, value in model.state_dict().items())


def test_resume_state_holds_the_plain_key_names(tmp_path: Path, settings: Settings) -> None:
    from cxrseg.training.schedule import LRSchedule
    from cxrseg.training.state import save_resume_state

    model = build_model(settings)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(10, 1))
    wrapped = DataParallelLike(torch.compile(model))
    save_resume_state(tmp_path, wrapped, optimizer, scheduler, Position(), [torch.Generator().get_state()])
    saved = {key for key in load_file(str(tmp_path / "state.safetensors")) if key.startswith("extra.model.")}
    assert saved == {f"extra.model.{key}" for key in model.state_dict()}


def test_prefixed_files_from_elsewhere_load(tmp_path: Path, settings: Settings) -> None:
    """A file written with 'module.' / '_orig_mod.' names (e.g. by another tool) still loads into a plain model."""
    from cxrseg.checkpoint import atomic_save, checkpoint_metadata

    model = build_model(settings)
    prefixed = {f"module._orig_mod.{key}": value for key, value in model.state_dict().items()}
    atomic_save(prefixed, checkpoint_metadata(CheckpointInfo(settings=settings)), tmp_path / "m.safetensors")
    loaded, _ = load_checkpoint(tmp_path / "m.safetensors")
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in model.state_dict().items())


def test_truncated_checkpoint_is_named(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model(settings), CheckpointInfo(settings=settings))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="m.safetensors is truncated or corrupt"):
        load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="--checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a cxrseg checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_optimizer_state_round_trip(tmp_path: Path, settings: Settings) -> None:
    model = build_model(settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 32, 32)).mean().backward()
    optimizer.step()
    save_state(tmp_path / "state.safetensors", optimizer, {"epoch": 3})
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert load_state(tmp_path / "state.safetensors", fresh)[0] == {"epoch": 3}
    for param in model.parameters():
        a, b = optimizer.state[param], fresh.state[param]
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
        assert float(a["step"]) == float(b["step"])
