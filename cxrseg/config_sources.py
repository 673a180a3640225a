"""Building Settings from their sources: defaults, a TOML file, CXRSEG_* variables, flags and checkpoints.

Every way in turns a bad value into one ConfigError line that names the setting and what to change.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsError, TomlConfigSettingsSource

from cxrseg.config import Settings
from cxrseg.errors import ConfigError


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, origin: str) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        parts.append(
            _unknown_setting(item["loc"]) if item["type"] == "extra_forbidden" else f"{where}: {_reason(item)}"
        )
    return f"Invalid settings ({origin}): " + "; ".join(parts)


def _reason(item: Any) -> str:
    """Pydantic's message without its 'Value error, ' prefix (our validators already say what to change)."""
    return re.sub(r"^(Value|Assertion) error, ", "", item["msg"])


def _unknown_setting(loc: tuple[Any, ...]) -> str:
    """'unknown setting train.batchsize; did you mean batch_size?' with the closest fields of that section."""
    model: Any = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        model = field.annotation if field is not None else None
    name = str(loc[-1])
    known = list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    where = ".".join(str(p) for p in loc)
    if close:
        return f"unknown setting {where}; did you mean {' or '.join(close)}?"
    return f"unknown setting {where}; known: {', '.join(known)}" if known else f"unknown setting {where}"


ENV_PREFIX = "CXRSEG_"


def setting_variables() -> list[str]:
    """Every CXRSEG_* variable a setting is read from: a section as JSON (CXRSEG_TRAIN), one field of it
    (CXRSEG_TRAIN__EPOCHS) or a top-level field (CXRSEG_DEBUG)."""
    names = []
    for name, field in Settings.model_fields.items():
        names.append(f"{ENV_PREFIX}{name.upper()}")
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names += [f"{ENV_PREFIX}{name.upper()}__{sub.upper()}" for sub in model.model_fields]
    return names


def _unknown_variable(environ: Mapping[str, str]) -> str | None:
    """'unknown variable CXRSEG_TRAIN_EPOCHS; did you mean CXRSEG_TRAIN__EPOCHS?' for the first CXRSEG_* variable
    that names no setting (pydantic-settings would pass over it, so the value would be silently unused)."""
    known = setting_variables()
    for name in sorted(environ):
        upper = name.upper()  # names are read case-insensitively, as pydantic-settings does
        if upper.startswith(ENV_PREFIX) and upper not in known:
            fields = [k for k in known if "__" in k and upper.endswith(k.partition("__")[2])]  # CXRSEG_EPOCHS
            rests = {k.removeprefix(ENV_PREFIX): k for k in known}
            similar = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), rests, n=2, cutoff=0.75)
            close = fields[:3] or [rests[r] for r in similar]
            hint = f"did you mean {' or '.join(close)}?" if close else "unset it"
            return f"unknown variable {name}; {hint} (CXRSEG_<SECTION>__<FIELD>, two underscores)"
    return None


def load_settings(config_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from defaults, an optional TOML file and CXRSEG_* environment variables (env wins).

    A CXRSEG_* variable that names no setting is refused, as an unknown key in the file is."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"Config file {config_file} not found; fix the --config path.")
    unknown = _unknown_variable(os.environ if environ is None else environ)
    if unknown:
        raise ConfigError(f"Invalid settings (CXRSEG_* environment): {unknown}")

    class _Loader(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            toml = [TomlConfigSettingsSource(settings_cls, toml_file=config_file)] if config_file else []
            return (init_settings, env_settings, *toml)  # earlier sources win

    origin = f"CXRSEG_* environment or {config_file}" if config_file else "CXRSEG_* environment"
    try:
        loaded = _Loader()
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {config_file} is not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from exc
    except SettingsError as exc:  # e.g. CXRSEG_TRAIN='{bad': a section variable that is not JSON
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise ConfigError(f"Invalid settings (CXRSEG_* environment): {exc}{cause}; fix or unset it.") from exc
    return Settings.model_validate(loaded.model_dump())


def with_overrides(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """Return a validated copy with `overrides` (nested dict, None values ignored) applied."""
    cleaned = _drop_none(overrides)
    try:
        return Settings.model_validate(_deep_merge(settings.model_dump(), cleaned))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "command-line flags")) from exc


def settings_from_json(values: object) -> Settings:
    """Rebuild Settings saved in a checkpoint, ignoring keys this version no longer knows. Saved settings without
    `data.split_rule` were split by the rule of their time, `shuffle`.

    Raises ValueError (pydantic's ValidationError is one) when `values` is not a settings object."""
    if not isinstance(values, dict):
        raise ValueError(f"settings must be a JSON object, got {type(values).__name__}")
    known = {k: v for k, v in values.items() if k in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        section = known.get(name)
        model_cls = field.annotation
        if isinstance(section, dict) and isinstance(model_cls, type) and issubclass(model_cls, BaseModel):
            known[name] = {k: v for k, v in section.items() if k in model_cls.model_fields}
    if isinstance(known.get("data"), dict):  # saved before the split rule was a setting: split by the old one
        known["data"].setdefault("split_rule", "shuffle")
    return Settings.model_validate(known)


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out
