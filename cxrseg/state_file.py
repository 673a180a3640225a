"""Resumable training state: optimizer tensors as safetensors plus JSON for the rest, never pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from cxrseg.checkpoint import FORMAT, read_safetensors, write_safetensors
from cxrseg.errors import CheckpointError
from cxrseg.files import atomic_path

STATE_FORMAT_VERSION = 1  # of the state file itself, apart from the model checkpoints' format


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
        "format_version": str(STATE_FORMAT_VERSION),
        "param_groups": json.dumps(state["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
        "extra": json.dumps(extra),
    }
    with atomic_path(path, fsync=True) as tmp:
        write_safetensors(flat, metadata, tmp, path)  # on a full disk this fails and the current state stays as it is
        if path.is_file():
            os.replace(path, previous_state(path))


def previous_state(path: Path) -> Path:
    return path.with_name(path.name.replace(".safetensors", ".prev.safetensors"))


def load_state(
    path: Path, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a state file written by save_state: restores `optimizer` and returns (extra JSON, extra tensors)."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT + "-state":
        raise CheckpointError(f"{path} is not a cxrseg training state file.")
    if not metadata.get("format_version", "0").isdigit() or int(metadata["format_version"]) > STATE_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is training state format {metadata.get('format_version')!r}, not one this cxrseg reads; "
            "resume it with the cxrseg that wrote it, or start a new run."
        )
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
