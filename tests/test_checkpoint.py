"""Self-describing checkpoints: round trips, corruption, prefixes, optimizer state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from cxrseg.checkpoint import (
    BUNDLED_MODEL,
    Checkpoint,
    build_model,
    default_checkpoint,
    load_checkpoint,
    load_state,
    newest_run_checkpoint,
    save_checkpoint,
    save_state,
)
from cxrseg.config import Settings
from cxrseg.errors import CheckpointError, OutputError
from cxrseg.memory import HEADROOM, activation_bytes, fit_batch_size
from cxrseg.model import UNet


@pytest.fixture
def settings() -> Settings:
    return Settings.model_validate({"model": {"base_channels": 4, "depth": 2}, "preprocess": {"image_size": 32}})


def test_round_trip_gives_identical_logits(tmp_path: Path, settings: Settings) -> None:
    torch.manual_seed(0)
    model = build_model(settings)
    model(torch.randn(4, 1, 32, 32))  # move batch-norm statistics away from their defaults
    model.eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, Checkpoint(settings=settings, epoch=7, metrics={"val_dice": 0.9}))
    loaded, info = load_checkpoint(path)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert info.settings == settings and info.epoch == 7 and info.metrics == {"val_dice": 0.9}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_wrapped_models_are_saved_unwrapped(tmp_path: Path, settings: Settings) -> None:
    model = build_model(settings)
    wrapped = torch.nn.Module()
    wrapped.module = model
    save_checkpoint(tmp_path / "m.safetensors", wrapped, Checkpoint(settings=settings))
    loaded, _ = load_checkpoint(tmp_path / "m.safetensors")
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_truncated_checkpoint_is_named(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build_model(settings), Checkpoint(settings=settings))
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


def _with_metadata(path: Path, source: Path, **changes: str) -> Path:
    """A copy of checkpoint `source` at `path` whose metadata has `changes` applied."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata() | changes
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture
def saved(tmp_path: Path, settings: Settings) -> Path:
    path = tmp_path / "good.safetensors"
    save_checkpoint(path, build_model(settings), Checkpoint(settings=settings))
    return path


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("format_version", "abc", "invalid literal"),
        ("settings", "[1]", "settings must be a JSON object, got list"),
        ("settings", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("metrics", "{" * 50_000, "nested too deeply|Expecting"),
        ("metrics", "[1]", "metrics must be a JSON object"),
        ("epoch", "x", "invalid literal"),
        ("settings", '{"train": {"lr": null}}', "train.lr"),
    ],
)
def test_item9_malformed_metadata_is_one_checkpoint_error(
    tmp_path: Path, saved: Path, key: str, value: str, reason: str
) -> None:
    bad = _with_metadata(tmp_path / "bad.safetensors", saved, **{key: value})
    with pytest.raises(CheckpointError, match=f"bad.safetensors: checkpoint metadata is unreadable \\(({reason})"):
        load_checkpoint(bad)


def test_item4_an_unreadable_newest_run_falls_back_to_older_runs_and_the_bundled_model(
    tmp_path: Path, saved: Path
) -> None:
    runs = tmp_path / "runs"
    for name in ("old", "new"):
        (runs / name).mkdir(parents=True)
    older = _with_metadata(runs / "old" / "best.safetensors", saved)
    newer = _with_metadata(runs / "new" / "best.safetensors", saved, settings='{"train": {"lr": null}}')
    os.utime(older, (1_000, 1_000))
    assert newest_run_checkpoint(runs) == older
    older.unlink()
    assert newer.is_file() and newest_run_checkpoint(runs) is None
    path, why = default_checkpoint(runs)
    assert path == BUNDLED_MODEL and "pretrained" in why


def test_item5_shapes_are_checked_before_any_model_is_built(
    tmp_path: Path, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = Settings.model_validate({"model": {"depth": 6, "base_channels": 128}})
    bad = _with_metadata(tmp_path / "huge.safetensors", saved, settings=huge.model_dump_json())
    built: list[int] = []
    real = UNet.__init__

    def spy(self, *args, **kwargs) -> None:
        built.append(torch.empty(0).device.type == "meta")  # a meta-device model allocates nothing
        real(self, *args, **kwargs)

    monkeypatch.setattr(UNet, "__init__", spy)
    with pytest.raises(CheckpointError, match=r"1,990,761,627 values expected, [\d,]+ stored"):
        load_checkpoint(bad)
    assert built == [True]  # only the shape template, never a real 2-billion-parameter U-Net


def test_item5_activation_estimate_lowers_the_batch_or_refuses() -> None:
    big = Settings.model_validate({"model": {"base_channels": 128}, "preprocess": {"image_size": 2048}})
    per_image = activation_bytes(big)
    assert per_image == 16 * 1024**3  # 2048^2 pixels x 128 channels x 8 copies x 4 bytes
    with pytest.raises(CheckpointError, match=r"needs about 16\.0 GiB per image .* only 8\.0 GiB is free"):
        fit_batch_size(big, 4, 8 * 1024**3)
    small = Settings()
    one = activation_bytes(small)
    assert fit_batch_size(small, 16, 100 * one) == (16, "")
    batch, note = fit_batch_size(small, 16, int(5 * one / HEADROOM) + 1)
    assert batch == 5 and "lowered from 16 to 5" in note
    assert fit_batch_size(small, 16, None) == (16, "")


def test_item3_full_disk_keeps_the_previous_state_valid(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxrseg.checkpoint as checkpoint

    model = build_model(settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = tmp_path / "state.safetensors"
    save_state(path, optimizer, {"epoch": 1})

    def full_disk(tensors, filename, metadata=None) -> None:
        Path(filename).write_bytes(b"half")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OutputError, match="cannot write .*state.safetensors: .*StorageFull"):
        save_state(path, optimizer, {"epoch": 2})
    assert load_state(path)[0] == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.safetensors"]
