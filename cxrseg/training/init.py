"""Fine-tuning: start training from the bundled model or any cxrseg checkpoint, in its shape and preprocessing."""

from __future__ import annotations

from pathlib import Path

import torch

from cxrseg.assets import BUNDLED_MODEL
from cxrseg.checkpoint import read_checkpoint
from cxrseg.config import Settings
from cxrseg.errors import ConfigError

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
    """`pretrained` is the model shipped in the package; anything else a checkpoint file."""
    return BUNDLED_MODEL if init_from == "pretrained" else Path(init_from)


def apply_init(settings: Settings) -> tuple[Settings, dict[str, torch.Tensor] | None]:
    """Settings with the model shape and preprocessing of `train.init_from`, and its weights (None without it).

    A shape setting that differs from both the default and the checkpoint was asked for on purpose: it conflicts
    with the checkpoint and stops with a message naming its flag.
    """
    if not settings.train.init_from:
        return settings, None
    path = init_checkpoint_path(settings.train.init_from)
    weights, info = read_checkpoint(path)
    defaults, conflicts = Settings(), []
    for (section, field), flag in SHAPE.items():
        mine = getattr(getattr(settings, section), field)
        theirs = getattr(getattr(info.settings, section), field)
        if mine != theirs and mine != getattr(getattr(defaults, section), field):
            conflicts.append(_named(flag, mine, theirs))
    if conflicts:
        raise ConfigError(
            f"--init-from {settings.train.init_from}: {', '.join(conflicts)} conflicts with {path}; the model "
            "shape and preprocessing come from the checkpoint, so drop the flag or train from scratch."
        )
    update = {"preprocess": info.settings.preprocess, "model": info.settings.model}
    return settings.model_copy(update=update), weights
