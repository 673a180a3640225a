"""Self-describing safetensors checkpoints and resumable training state, written atomically."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cxrseg import __version__
from cxrseg.assets import BUNDLED_MODEL
from cxrseg.config import Settings, settings_from_json
from cxrseg.errors import CheckpointError
from cxrseg.files import atomic_path
from cxrseg.model import UNet

FORMAT = "cxrseg-checkpoint"
FORMAT_VERSION = 1
STRIP_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself, besides its weights."""

    settings: Settings
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write safetensors to a temporary name in the same folder, fsync, then rename over `path`."""
    with atomic_path(path, fsync=True) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        inner = getattr(model, "_orig_mod", None) if inner is None else inner  # `or` would call len() on a compiled one
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    clean = {}
    for key, value in state.items():
        for prefix in STRIP_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        clean[key] = value
    return clean


def save_checkpoint(path: Path, model: torch.nn.Module, info: CheckpointInfo) -> None:
    """Weights of the unwrapped model plus metadata: format, versions, full settings, epoch, metrics."""
    atomic_save(strip_prefixes(unwrap(model).state_dict()), checkpoint_metadata(info), path)


def checkpoint_metadata(info: CheckpointInfo) -> dict[str, str]:
    """The string metadata every cxrseg model file carries (safetensors header, ONNX metadata_props)."""
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "cxrseg_version": __version__,
        "settings": info.settings.model_dump_json(),
        "epoch": str(info.epoch),
        "metrics": json.dumps(info.metrics),
    }


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} not found; pass --checkpoint PATH to a .safetensors file.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt ({exc}); use another checkpoint.") from exc
    return tensors, metadata


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Weights and metadata of a cxrseg checkpoint, validated."""
    tensors, metadata = _read(path)
    return strip_prefixes(tensors), checkpoint_from_metadata(metadata, path, "a safetensors file")


def checkpoint_from_metadata(metadata: dict[str, str], path: Path, kind: str) -> CheckpointInfo:
    """Validate and parse what checkpoint_metadata wrote; `kind` names the file type in messages."""
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is {kind} but not a cxrseg checkpoint (no '{FORMAT}' metadata).")
    if int(metadata.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {metadata['format_version']}, newer than this cxrseg "
            f"({__version__}) reads; upgrade cxrseg."
        )
    try:
        return CheckpointInfo(
            settings=settings_from_json(json.loads(metadata["settings"])),
            epoch=int(metadata.get("epoch", 0)),
            metrics=json.loads(metadata.get("metrics", "{}")),
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is unreadable ({exc}).") from exc


def checkpoint_metrics(path: Path) -> dict[str, Any]:
    """The metrics a checkpoint recorded (e.g. val_dice), read from its header without loading the weights."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return dict(json.loads(metadata.get("metrics", "{}")))
    except (SafetensorError, OSError, ValueError, TypeError):
        return {}


def build_model(settings: Settings) -> UNet:
    return UNet(in_channels=1, out_channels=1, base_channels=settings.model.base_channels, depth=settings.model.depth)


def load_checkpoint(path: Path) -> tuple[UNet, CheckpointInfo]:
    """Rebuild the U-Net from the checkpoint's own settings and load its weights (eval mode)."""
    tensors, info = read_checkpoint(path)
    model = build_model(info.settings)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the U-Net its settings describe ({exc}).") from exc
    return model.eval(), info


def save_state(
    path: Path, optimizer: torch.optim.Optimizer, extra: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None
) -> None:
    """Optimizer state and other `tensors` as safetensors plus JSON `extra` (scheduler, epoch, RNG, ...):
    resumable without pickle. The file it replaces is kept as `<name>.prev.safetensors`."""
    state = optimizer.state_dict()
    flat: dict[str, torch.Tensor] = {f"extra.{k}": v for k, v in (tensors or {}).items()}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                flat[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    metadata = {
        "format": FORMAT + "-state",
        "format_version": str(FORMAT_VERSION),
        "param_groups": json.dumps(state["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
        "extra": json.dumps(extra),
    }
    if path.is_file():
        os.replace(path, previous_state(path))
    atomic_save(flat, metadata, path)


def previous_state(path: Path) -> Path:
    return path.with_name(path.name.replace(".safetensors", ".prev.safetensors"))


def load_state(
    path: Path, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a state file written by save_state: restores `optimizer` and returns (extra JSON, extra tensors)."""
    tensors, metadata = _read(path)
    if metadata.get("format") != FORMAT + "-state":
        raise CheckpointError(f"{path} is not a cxrseg training state file.")
    state: dict[int, dict[str, Any]] = {}
    extra_tensors: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        kind, rest = key.split(".", 1)
        if kind == "extra":
            extra_tensors[rest] = value
        else:
            index, name = rest.split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, values in json.loads(metadata["optimizer_scalars"]).items():
        state.setdefault(int(index), {}).update(values)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(
                {"state": dict(sorted(state.items())), "param_groups": json.loads(metadata["param_groups"])}
            )
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: optimizer state does not match this model ({exc}).") from exc
    return json.loads(metadata["extra"]), extra_tensors


def newest_run_checkpoint(runs_dir: Path) -> Path | None:
    """best.safetensors of the most recently modified run in `runs_dir`, if any."""
    if not runs_dir.is_dir():
        return None
    candidates = [p for p in runs_dir.glob("*/best.safetensors") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def default_checkpoint(runs_dir: Path) -> tuple[Path, str]:
    """The checkpoint to use when none is given, and a sentence saying which and why."""
    newest = newest_run_checkpoint(runs_dir)
    if newest is not None:
        return newest, f"Using the newest run's best checkpoint {newest}"
    if BUNDLED_MODEL.is_file():
        return BUNDLED_MODEL, f"No run in {runs_dir}; using the pretrained lung model shipped with cxrseg"
    raise CheckpointError(
        f"No checkpoint given and no run in {runs_dir}; pass --checkpoint PATH or run `cxrseg train`."
    )
