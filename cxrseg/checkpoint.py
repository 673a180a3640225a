"""Self-describing safetensors checkpoints, written atomically (training state: cxrseg/state_file.py)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cxrseg import __version__
from cxrseg.assets import BUNDLED_MODEL
from cxrseg.config import Settings
from cxrseg.config_sources import settings_from_json
from cxrseg.errors import CheckpointError, OutputError
from cxrseg.files import atomic_path
from cxrseg.model import UNet

FORMAT = "cxrseg-checkpoint"
FILM_KEY = re.compile(r"[0-9a-f]{8}")  # cxrseg.dataset.film_key's form
FORMAT_VERSION = 2  # the newest format this cxrseg reads and writes; 2: preprocess.trim_border may be on
STRIP_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself, besides its weights."""

    settings: Settings
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    # film_key of every film the weights were fitted on (this run's `train` and those of the checkpoint it
    # started from): a `val` split never scores them, whatever the folder or split rule; empty when unknown
    trained_on: frozenset[str] = frozenset()


def atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write safetensors to a temporary name in the same folder, fsync, then rename over `path`."""
    with atomic_path(path, fsync=True) as tmp:
        write_safetensors(tensors, metadata, tmp, path)


def write_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], tmp: Path, path: Path) -> None:
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    except SafetensorError as exc:  # the Rust writer reports a full disk as SafetensorError, not OSError
        raise OutputError(f"cannot write {path}: {exc}; free some space or choose another folder.") from exc


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        inner = getattr(model, "_orig_mod", None) if inner is None else inner  # `or` would call len() on a compiled one
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    clean = {}
    for key, value in state.items():
        for prefix in STRIP_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        clean[key] = value
    return clean


def save_checkpoint(path: Path, model: torch.nn.Module, info: CheckpointInfo, *, half: bool = False) -> None:
    """Weights of the unwrapped model plus metadata: format, versions, full settings, epoch, metrics.

    `half` stores floating-point weights as float16 (half the file; loading casts them back to float32).
    """
    state = strip_prefixes(unwrap(model).state_dict())
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    atomic_save(state, checkpoint_metadata(info), path)


def format_version(settings: Settings) -> int:
    """The oldest format that describes a model with these settings. A model that crops uniform margins (2)
    must not be read by a cxrseg that would drop the setting and feed it the whole canvas; others stay at 1,
    readable by every version."""
    return 2 if settings.preprocess.trim_border else 1


def checkpoint_metadata(info: CheckpointInfo) -> dict[str, str]:
    """The string metadata every cxrseg model file carries (safetensors header, ONNX metadata_props)."""
    return {
        "format": FORMAT,
        "format_version": str(format_version(info.settings)),
        "cxrseg_version": __version__,
        "settings": info.settings.model_dump_json(),
        "epoch": str(info.epoch),
        "metrics": json.dumps(info.metrics),
    } | ({"trained_on": " ".join(sorted(info.trained_on))} if info.trained_on else {})


def _open(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} not found; pass --checkpoint PATH to a .safetensors file.")
    return safe_open(str(path), framework="pt")


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"Checkpoint {path} is truncated or corrupt ({exc}); use another checkpoint.")


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with _open(path) as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _corrupt(path, exc) from exc
    return tensors, metadata


def _read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata from the header alone: no tensor data is read."""
    try:
        with _open(path) as handle:
            metadata = handle.metadata() or {}
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _corrupt(path, exc) from exc
    return shapes, metadata


def checkpoint_from_metadata(metadata: dict[str, str], path: Path, kind: str) -> CheckpointInfo:
    """Validate and parse what checkpoint_metadata wrote (untrusted: every malformed value becomes one
    CheckpointError); `kind` names the file type in messages."""
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is {kind} but not a cxrseg checkpoint (no '{FORMAT}' metadata).")
    try:
        version = int(metadata.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} uses checkpoint format {version}, newer than this cxrseg ({__version__}) reads; "
                "upgrade cxrseg."
            )
        metrics = json.loads(metadata.get("metrics", "{}"))
        if not isinstance(metrics, dict):
            raise ValueError(f"metrics must be a JSON object, got {type(metrics).__name__}")
        keys = frozenset(metadata.get("trained_on", "").split())
        if not all(FILM_KEY.fullmatch(key) for key in keys):
            raise ValueError("trained_on must hold film keys (8 hex digits) separated by spaces")
        return CheckpointInfo(
            settings=settings_from_json(json.loads(metadata["settings"])),
            epoch=int(metadata.get("epoch", 0)),
            metrics=metrics,
            trained_on=keys,
        )
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        reason = _reason(exc)
        raise CheckpointError(f"{path}: checkpoint metadata is unreadable ({reason}); use another checkpoint.") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, ValidationError):
        return "; ".join(".".join(map(str, e["loc"])) + ": " + e["msg"] for e in exc.errors(include_url=False))
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def expected_shapes(settings: Settings) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of the U-Net `settings` describe, from a model on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(settings)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _check_shapes(path: Path, stored: dict[str, tuple[int, ...]], settings: Settings) -> None:
    expected = expected_shapes(settings)
    stored = strip_prefixes(stored)
    count, want = sum(math.prod(s) for s in stored.values()), sum(math.prod(s) for s in expected.values())
    wrong = sorted(k for k in expected.keys() & stored.keys() if expected[k] != stored[k])
    missing, unexpected = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    if count != want or wrong or missing or unexpected:
        first = (wrong + missing + unexpected)[0] if wrong or missing or unexpected else "(sizes)"
        raise CheckpointError(
            f"{path}: weights do not fit the U-Net its settings describe (depth {settings.model.depth}, "
            f"base channels {settings.model.base_channels}: {want:,} values expected, {count:,} stored; "
            f"{len(wrong)} wrong shapes, {len(missing)} missing, {len(unexpected)} unexpected, first {first}); "
            "use another checkpoint."
        )


def read_info(path: Path) -> CheckpointInfo:
    """The checkpoint's metadata, validated, without reading any weights."""
    _, metadata = _read_header(path)
    return checkpoint_from_metadata(metadata, path, "a safetensors file")


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Weights and metadata of a cxrseg checkpoint, validated: the metadata and the stored tensor shapes are
    checked against each other before any weight is read or any model is built."""
    shapes, metadata = _read_header(path)
    info = checkpoint_from_metadata(metadata, path, "a safetensors file")
    _check_shapes(path, shapes, info.settings)
    tensors, _ = read_safetensors(path)
    return strip_prefixes(tensors), info


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


def newest_run_checkpoint(runs_dir: Path) -> Path | None:
    """best.safetensors of the most recently modified run in `runs_dir` whose metadata is readable, if any:
    one broken run never hides the runs before it or the bundled model."""
    if not runs_dir.is_dir():
        return None
    candidates = [p for p in runs_dir.glob("*/best.safetensors") if p.is_file()]
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            read_info(candidate)
        except CheckpointError:
            continue
        return candidate
    return None


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
