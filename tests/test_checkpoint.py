"""Self-describing checkpoints: round trips, corruption, prefixes, optimizer state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from cxrseg.checkpoint import (
    BUNDLED_MODEL,
    CheckpointInfo,
    build_model,
    default_checkpoint,
    load_checkpoint,
    newest_run_checkpoint,
    read_info,
    save_checkpoint,
)
from cxrseg.config import Settings
from cxrseg.errors import CheckpointError, OutputError
from cxrseg.memory import HEADROOM, activation_bytes, fit_batch_size
from cxrseg.model import UNet
from cxrseg.state_file import load_state, save_state
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


@pytest.mark.parametrize(
    "wrap",
    [
        DataParallelLike,
        pytest.param(torch.compile, marks=pytest.mark.slow),
        pytest.param(lambda m: DataParallelLike(torch.compile(m)), marks=pytest.mark.slow),
    ],
)
def test_wrapped_models_are_saved_under_the_plain_key_names(tmp_path: Path, settings: Settings, wrap) -> None:
    """The file itself holds the bare names (read raw: load_checkpoint would strip prefixes and hide a bug)."""
    model = build_model(settings)
    wrapped = wrap(model)
    assert any(key.startswith(("module.", "_orig_mod.")) for key in wrapped.state_dict())  # the wrapper adds them
    save_checkpoint(tmp_path / "m.safetensors", wrapped, CheckpointInfo(settings=settings))
    saved = load_file(str(tmp_path / "m.safetensors"))
    assert set(saved) == set(model.state_dict())
    assert all(torch.equal(saved[key], value) for key, value in model.state_dict().items())


@pytest.mark.slow  # torch.compile
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
    save_checkpoint(path, build_model(settings), CheckpointInfo(settings=settings))
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
        ("trained_on", "6e4ddced <script>", "trained_on must hold film keys"),
        ("settings", '{"train": {"lr": -1}}', "train.lr"),
    ],
)
def test_item9_malformed_metadata_is_one_checkpoint_error(
    tmp_path: Path, saved: Path, key: str, value: str, reason: str
) -> None:
    bad = _with_metadata(tmp_path / "bad.safetensors", saved, **{key: value})
    with pytest.raises(CheckpointError, match=f"bad.safetensors: checkpoint metadata is unreadable \\(({reason})"):
        load_checkpoint(bad)


def test_the_films_a_checkpoint_learnt_travel_in_its_metadata(tmp_path: Path, settings: Settings) -> None:
    from cxrseg.dataset import film_key

    learnt = frozenset({film_key("CHNCXR_0001_0"), film_key("case_003")})
    save_checkpoint(tmp_path / "a.safetensors", build_model(settings), CheckpointInfo(settings, trained_on=learnt))
    assert load_checkpoint(tmp_path / "a.safetensors")[1].trained_on == learnt
    save_checkpoint(tmp_path / "b.safetensors", build_model(settings), CheckpointInfo(settings))
    assert load_checkpoint(tmp_path / "b.safetensors")[1].trained_on == frozenset()  # unknown: nothing recorded


def test_the_bundled_model_records_the_films_it_learnt() -> None:
    """Its 453 `train` films: a fine-tune on a copy of the Shenzhen films, wherever it lies, keeps them out of
    `val`. The sample holds none of them (its films are `test` films)."""
    from cxrseg.assets import SAMPLE_DIR
    from cxrseg.dataset import film_key, select_pairs

    learnt = read_info(BUNDLED_MODEL).trained_on
    assert len(learnt) == 453
    sample = select_pairs(SAMPLE_DIR, "all")
    assert len(sample) == 24 and not {film_key(pair.name) for pair in sample} & learnt


def test_film_keys_take_any_file_name_and_one_unicode_spelling() -> None:
    """A name that is not UTF-8 (os.listdir's surrogate escapes) stopped training under the `name` rule; the same
    accented name written NFC or NFD (macOS) must be one film, on one side of the split."""
    import unicodedata

    from cxrseg.dataset import _unit, film_key

    odd = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert len(film_key(odd)) == 8 and 0 <= _unit(0, odd) < 1
    nfc, nfd = (unicodedata.normalize(form, "radiografía_001") for form in ("NFC", "NFD"))
    assert nfc != nfd and film_key(nfc) == film_key(nfd) and _unit(3, nfc) == _unit(3, nfd)
    assert film_key("CHNCXR_0001_0") == "6e4ddced"  # recorded in checkpoints: must never change


def test_item4_an_unreadable_newest_run_falls_back_to_older_runs_and_the_bundled_model(
    tmp_path: Path, saved: Path
) -> None:
    runs = tmp_path / "runs"
    for name in ("old", "new"):
        (runs / name).mkdir(parents=True)
    older = _with_metadata(runs / "old" / "best.safetensors", saved)
    newer = _with_metadata(runs / "new" / "best.safetensors", saved, settings='{"train": {"lr": -1}}')
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


def test_half_precision_checkpoint_loads_back_as_float32_with_the_same_predictions(
    tmp_path: Path, settings: Settings
) -> None:
    model = build_model(settings).eval()
    torch.manual_seed(0)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.1)
    save_checkpoint(tmp_path / "full.safetensors", model, CheckpointInfo(settings=settings))
    save_checkpoint(tmp_path / "half.safetensors", model, CheckpointInfo(settings=settings), half=True)
    assert (tmp_path / "half.safetensors").stat().st_size < 0.6 * (tmp_path / "full.safetensors").stat().st_size
    loaded, _ = load_checkpoint(tmp_path / "half.safetensors")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(2, 1, settings.preprocess.image_size, settings.preprocess.image_size)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=2e-2)


def test_a_model_that_crops_margins_is_format_2_others_stay_readable_by_older_versions(
    tmp_path: Path, settings: Settings
) -> None:
    trims = settings.model_copy(update={"preprocess": settings.preprocess.model_copy(update={"trim_border": True})})
    for name, chosen, version in (("plain", settings, "1"), ("trims", trims, "2")):
        path = tmp_path / f"{name}.safetensors"
        save_checkpoint(path, build_model(chosen), CheckpointInfo(settings=chosen))
        with safe_open(str(path), framework="pt") as handle:
            assert handle.metadata()["format_version"] == version
        assert load_checkpoint(path)[1].settings.preprocess.trim_border is chosen.preprocess.trim_border
    future = _with_metadata(tmp_path / "future.safetensors", tmp_path / "trims.safetensors", format_version="3")
    with pytest.raises(CheckpointError, match="newer than this cxrseg"):
        load_checkpoint(future)


def test_a_state_file_of_a_newer_or_unreadable_format_is_refused_with_one_line(
    tmp_path: Path, settings: Settings
) -> None:
    model = build_model(settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = tmp_path / "state.safetensors"
    save_state(state, optimizer, {"epoch": 1})
    with safe_open(str(state), framework="pt") as handle:
        assert handle.metadata()["format_version"] == "1"  # the state format did not change with the models'
    for version in ("2", "x"):
        newer = _with_metadata(tmp_path / f"state-{version}.safetensors", state, format_version=version)
        with pytest.raises(CheckpointError, match="not one this cxrseg reads; resume it with the cxrseg that wrote"):
            load_state(newer, optimizer)
