"""Fine-tuning: start training from the bundled model or any cxrseg checkpoint, in its shape and preprocessing."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch

from cxrseg.assets import BUNDLED_MODEL
from cxrseg.checkpoint import CheckpointInfo, read_checkpoint, read_info
from cxrseg.config import DataSettings, Settings
from cxrseg.dataset import IMAGE_DIR, dataset_splits, film_key, list_images
from cxrseg.errors import ConfigError

SPLIT = ("split_rule", "val_fraction", "split_seed")  # what decides which films of a folder are `val`
SHAPE = {
    ("preprocess", "image_size"): "--image-size",
    ("preprocess", "trim_border"): "--trim-border",
    ("model", "depth"): "--depth",
    ("model", "base_channels"): "--base-channels",
}


def _named(flag: str, mine: object, theirs: object) -> str:
    """A conflict in words: "--depth 5 (the checkpoint has 4)", "--no-trim-border (the checkpoint has
    trim-border on)"."""
    if isinstance(mine, bool):
        switch = flag if mine else flag.replace("--", "--no-", 1)
        return f"{switch} (the checkpoint has {flag.removeprefix('--')} {'on' if theirs else 'off'})"
    return f"{flag} {mine} (the checkpoint has {theirs})"


def init_checkpoint_path(init_from: str) -> Path:
    """`pretrained` is the model shipped in the package; anything else a checkpoint file, which must exist."""
    if init_from == "pretrained":
        return BUNDLED_MODEL
    path = Path(init_from)
    if path.is_dir():
        raise ConfigError(
            f"--init-from {init_from} is a folder; give a checkpoint file in it (a run's best.safetensors) "
            "or `pretrained` for the bundled model."
        )
    if not path.is_file():
        raise ConfigError(
            f"--init-from {init_from}: no such file; give a cxrseg .safetensors checkpoint or `pretrained` "
            "for the bundled model."
        )
    return path


def check_init(settings: Settings, theirs: Settings, path: Path, asked: Collection[tuple[str, str]] = ()) -> None:
    """Stop with a message naming each shape setting of `settings` that contradicts the checkpoint at `path`
    (whose settings are `theirs`) and was asked for on purpose: given explicitly (`asked`, (section, field)
    pairs such as the command-line flags), or differing from the default (a config file's or a CXRSEG_*
    variable's value; the defaults are the sections' own, which read no environment)."""
    conflicts = []
    for (section, field), flag in SHAPE.items():
        mine = getattr(getattr(settings, section), field)
        other = getattr(getattr(theirs, section), field)
        default = type(getattr(settings, section)).model_fields[field].default
        if mine != other and ((section, field) in asked or mine != default):
            conflicts.append(_named(flag, mine, other))
    if conflicts:
        raise ConfigError(
            f"--init-from {settings.train.init_from}: {', '.join(conflicts)} conflicts with {path}; the model "
            "shape and preprocessing come from the checkpoint, so drop the flag or train from scratch."
        )


def shared_folders(settings: Settings, info: CheckpointInfo) -> list[Path]:
    """The --data folders holding films the checkpoint was fitted on: by their names (its `trained_on`), or, for
    a checkpoint that records none, by the folder's resolved path."""
    if not info.trained_on:
        trained_in = {root.resolve() for root in info.settings.data.root}
        return [root for root in settings.data.root if root.resolve() in trained_in]
    return [
        root
        for root in settings.data.root
        if (root / IMAGE_DIR).is_dir()
        and any(film_key(p.stem) in info.trained_on for p in list_images(root / IMAGE_DIR))
    ]


def check_init_flags(settings: Settings, flags: dict[str, dict[str, object]]) -> None:
    """check_init against `train.init_from`'s checkpoint (its header only), before anything is decoded; a no-op
    without init_from. `flags`: the command line's values by section and field (None: not given); a shape flag
    given is checked even when it equals the default."""
    if settings.train.init_from:
        path = init_checkpoint_path(settings.train.init_from)
        asked = [(section, field) for section, field in SHAPE if flags.get(section, {}).get(field) is not None]
        check_init(settings, read_info(path).settings, path, asked)


def apply_init(settings: Settings) -> tuple[Settings, dict[str, torch.Tensor] | None, frozenset[str]]:
    """Settings with the model shape and preprocessing of `train.init_from`, its weights (None without it) and
    the film keys it was fitted on (CheckpointInfo.trained_on), which training never validates on.

    A shape setting that differs from both the default and the checkpoint was asked for on purpose: it conflicts
    with the checkpoint and stops with a message naming its flag (see check_init). When a --data folder holds
    films the checkpoint was fitted on, its train/val split rule, share and seed are used too, unless asked for
    (they differ from the defaults): the bundled model's `shuffle` on its own films keeps all 50 of its `val`
    films, where another split would leave few films it has not learnt.
    """
    if not settings.train.init_from:
        return settings, None, frozenset()
    path = init_checkpoint_path(settings.train.init_from)
    weights, info = read_checkpoint(path)
    check_init(settings, info.settings, path)
    update: dict[str, object] = {"preprocess": info.settings.preprocess, "model": info.settings.model}
    shared = shared_folders(settings, info)
    learnt = info.trained_on or _legacy_learnt(info, shared)
    if shared:
        defaults = DataSettings.model_fields
        split = {
            field: getattr(info.settings.data, field)
            for field in SPLIT
            if getattr(settings.data, field) == defaults[field].default
        }
        update["data"] = settings.data.model_copy(update=split)
    return settings.model_copy(update=update), weights, learnt


def _legacy_learnt(info: CheckpointInfo, shared: list[Path]) -> frozenset[str]:
    """For a checkpoint that records no films (made before it could), those of its own `train` split of the
    --data folders it was trained in (by path): what it learnt there."""
    data = info.settings.data
    return frozenset(
        film_key(pair.name)
        for root in shared
        for pair in dataset_splits(root, data.val_fraction, data.split_seed, rule=data.split_rule, with_test=False)[
            "train"
        ]
    )
