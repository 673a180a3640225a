"""Settings precedence: flags > CXRSEG_* env > config file > defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrseg.config import Settings
from cxrseg.config_sources import load_settings, settings_from_json, with_overrides
from cxrseg.errors import ConfigError


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cxrseg.toml"
    config.write_text("[train]\nepochs = 7\nlr = 0.01\nbatch_size = 8\n")
    monkeypatch.setenv("CXRSEG_TRAIN__EPOCHS", "9")
    monkeypatch.setenv("CXRSEG_TRAIN__BATCH_SIZE", "4")
    settings = with_overrides(load_settings(config), {"train": {"batch_size": 2, "lr": None}})
    assert settings.train.epochs == 9  # env over file
    assert settings.train.lr == 0.01  # file over default; None flag ignored
    assert settings.train.batch_size == 2  # flag over env
    assert settings.model.depth == Settings().model.depth


def test_errors_name_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match="train.epochz"):
        load_settings(config)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="multiple of 16"):
        with_overrides(Settings(), {"preprocess": {"image_size": 100}})
    monkeypatch.setenv("CXRSEG_TRAIN__EPOCHS", "many")
    with pytest.raises(ConfigError, match="train.epochs"):
        load_settings()


def test_image_size_must_fit_the_depth() -> None:
    with pytest.raises(ConfigError, match="--image-size 64"):
        with_overrides(Settings(), {"model": {"depth": 5}, "preprocess": {"image_size": 48}})


@pytest.mark.parametrize("text", ["lr = inf", "lr = nan", "weight_decay = -inf", "max_time = inf"])
def test_item4_non_finite_floats_are_refused(tmp_path: Path, text: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[train]\n{text}\n")
    with pytest.raises(ConfigError, match="finite"):
        load_settings(config)
    with pytest.raises(ConfigError, match="inference.threshold: Input should be a finite number"):
        with_overrides(Settings(), {"inference": {"threshold": float("nan")}})


def test_item9_section_env_variable_that_is_not_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRSEG_TRAIN", "{bad")
    with pytest.raises(ConfigError, match="CXRSEG_") as caught:
        load_settings()
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_dataset_folders_are_kept_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint's settings must still name its folders when read from another working directory."""
    monkeypatch.chdir(tmp_path)
    settings = Settings.model_validate({"data": {"root": ["films", "more/films"]}})
    assert settings.data.root == [tmp_path / "films", tmp_path / "more" / "films"]
    assert Settings().data.root == [tmp_path / "data" / "chest-segmentation-image"]
    monkeypatch.chdir(tmp_path.parent)
    again = settings_from_json(json.loads(settings.model_dump_json()))
    assert again.data.root == settings.data.root


def test_saved_settings_without_a_split_rule_are_read_with_the_rule_of_their_time() -> None:
    """Checkpoints and runs saved before `data.split_rule` existed were split by `shuffle`; read as `name`,
    `evaluate --split val` and a resumed run would validate on films they were trained on."""
    from cxrseg.assets import BUNDLED_MODEL
    from cxrseg.checkpoint import read_info

    saved = json.loads(Settings().model_dump_json())
    assert saved["data"].pop("split_rule") == "name"  # what a new run records
    assert settings_from_json(saved).data.split_rule == "shuffle"
    saved["data"]["split_rule"] = "name"
    assert settings_from_json(saved).data.split_rule == "name"
    assert read_info(BUNDLED_MODEL).settings.data.split_rule == "shuffle"  # its `val` is the 50 films it was chosen on


def test_init_from_is_kept_absolute_and_an_empty_value_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.model_validate({"train": {"init_from": "a/b.safetensors"}}).train.init_from == str(
        tmp_path / "a" / "b.safetensors"
    )
    assert Settings.model_validate({"train": {"init_from": "pretrained"}}).train.init_from == "pretrained"
    for empty in ("", "  "):  # an unset variable in a script, `CXRSEG_TRAIN__INIT_FROM=`: train from scratch
        assert Settings.model_validate({"train": {"init_from": empty}}).train.init_from is None


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("CXRSEG_TRAIN_EPOCHS", "did you mean CXRSEG_TRAIN__EPOCHS?"),  # one underscore: read by nothing
        ("CXRSEG_TRIAN__EPOCHS", "did you mean CXRSEG_TRAIN__EPOCHS?"),
        ("CXRSEG_EPOCHS", "did you mean CXRSEG_TRAIN__EPOCHS?"),
        ("CXRSEG_TRAIN__EPOCHZ", "did you mean CXRSEG_TRAIN__EPOCHS?"),
        ("CXRSEG_NOTHING_LIKE_IT", "unset it"),
    ],
)
def test_a_variable_that_names_no_setting_is_refused(name: str, hint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "10")
    with pytest.raises(ConfigError, match=f"unknown variable {name}; {hint}") as caught:
        load_settings()
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_every_setting_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrseg.config_sources import setting_variables

    assert {"CXRSEG_DEBUG", "CXRSEG_TRAIN", "CXRSEG_TRAIN__EPOCHS", "CXRSEG_DATA__ROOT"} <= set(setting_variables())
    monkeypatch.setenv("CXRSEG_TRAIN__EPOCHS", "7")
    monkeypatch.setenv("cxrseg_model__depth", "3")  # read whatever the case, so accepted whatever the case
    settings = load_settings()
    assert (settings.train.epochs, settings.model.depth) == (7, 3)


def test_a_home_folder_in_a_setting_path_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`~` in a config file or a quoted flag is the home folder, as the shell would read it, never a folder `~`."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text('[data]\nroot = "~/films"\n[train]\nruns_dir = "~/runs"\ninit_from = "~/a.safetensors"\n')
    settings = load_settings(config)
    assert settings.data.root == [tmp_path / "home" / "films"]
    assert settings.train.runs_dir == tmp_path / "home" / "runs"
    assert settings.train.init_from == str(tmp_path / "home" / "a.safetensors")


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"train": {"seed": 10**23}}, "train.seed"),  # past what torch's 64-bit generators take
        ({"train": {"seed": -(10**23)}}, "train.seed"),
        ({"download": {"timeout": 1e12}}, "download.timeout"),  # past what a socket's timeout takes
    ],
)
def test_values_no_run_could_use_are_refused_by_name(override: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        with_overrides(Settings(), override)


def test_the_largest_seeds_allowed_seed_every_generator() -> None:
    from cxrseg.training.schedule import seed_everything

    for seed in (2**53, -(2**53)):
        settings = with_overrides(Settings(), {"train": {"seed": seed}})
        seed_everything(settings.train.seed)
        torch = pytest.importorskip("torch")
        torch.Generator().manual_seed(settings.train.seed * 1009 + 7)  # the augmentation generator of rank 7
        torch.Generator().manual_seed(settings.train.seed + 10**6)  # the sampler's, at epoch one million


def test_an_empty_variable_is_an_unset_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """`CXRSEG_TRAIN__PATIENCE=$PATIENCE` with PATIENCE unset, or `CXRSEG_DEBUG=`: the default, as for the shell,
    not a refusal (nor, for a folder, the working directory)."""
    for name in (
        "CXRSEG_DEBUG",
        "CXRSEG_TRAIN__PATIENCE",
        "CXRSEG_TRAIN__RUNS_DIR",
        "CXRSEG_DATA__ROOT",
        "CXRSEG_MODEL",
    ):
        monkeypatch.setenv(name, "")
    settings = load_settings()
    assert settings.debug is False and settings.train.patience is None
    assert settings.train.runs_dir == Path("runs") and settings.data.root == Settings().data.root


def test_the_learning_rate_unset_is_a_tenth_when_fine_tuning() -> None:
    assert Settings().train.peak_lr == 1e-2
    assert Settings.model_validate({"train": {"init_from": "pretrained"}}).train.peak_lr == 1e-3
    assert Settings.model_validate({"train": {"init_from": "pretrained", "lr": 5e-3}}).train.peak_lr == 5e-3
    assert Settings.model_validate({"train": {"lr": 2e-2}}).train.peak_lr == 2e-2
