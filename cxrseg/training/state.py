"""Resumable training state (weights, optimizer, schedule, position, RNG) and the run folder's records."""

from __future__ import annotations

import contextlib
import json
import platform
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrseg import __version__
from cxrseg.checkpoint import strip_prefixes, unwrap
from cxrseg.config import Settings
from cxrseg.config_sources import settings_from_json
from cxrseg.errors import CheckpointError, OutputError, TrainingError
from cxrseg.files import write_text
from cxrseg.inference.render import plot_progress, save_png
from cxrseg.state_file import load_state, previous_state, save_state

STATE_FILE = "state.safetensors"
LOCK_FILE = ".lock"


@dataclass
class Position:
    """Where training stands: `epochs_done` complete epochs plus `step` steps into the next one."""

    epochs_done: int = 0
    step: int = 0
    best_dice: float = -1.0
    best_epoch: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0


def save_resume_state(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    position: Position,
    generator_states: list[torch.Tensor],
    scaler: torch.amp.GradScaler | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> None:
    """One atomic file holds everything a resume needs, so its parts can never disagree."""
    tensors = {f"model.{k}": v for k, v in strip_prefixes(unwrap(model).state_dict()).items()}
    if ema is not None:
        tensors |= {f"ema.{k}": v for k, v in strip_prefixes(ema.module.state_dict()).items()}
        tensors["ema_steps"] = ema.n_averaged
    tensors["rng.torch"] = torch.get_rng_state()
    for rank, state in enumerate(generator_states):
        tensors[f"rng.generator.{rank}"] = state
    numpy_state = np.random.get_state()
    extra = {
        "position": asdict(position),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "world_size": len(generator_states),
        "rng_python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "rng_numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
    save_state(run_dir / STATE_FILE, optimizer, extra, tensors)


@contextlib.contextmanager
def lock_run(run_dir: Path) -> Iterator[None]:
    """Hold run_dir/.lock inside the block, so a second `cxrseg train` of the same run stops at once.

    The operating system releases the lock when the file is closed or the process ends, however it ends.
    """
    try:
        handle = open(run_dir / LOCK_FILE, "ab")  # noqa: SIM115 (closed by the `with` below)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{run_dir} not found; --resume takes a run folder written by `cxrseg train`.") from exc
    except OSError as exc:
        raise OutputError(f"{run_dir}: cannot write there ({exc.strerror}); check its permissions.") from exc
    with handle:
        try:
            import fcntl  # POSIX; elsewhere (Windows) the ImportError below trains unguarded

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise TrainingError(
                f"{run_dir} is in use by another `cxrseg train` (it holds {run_dir / LOCK_FILE}); wait for it to "
                "end or stop it, then resume."
            ) from exc
        except (OSError, ImportError):
            pass  # no locks here (some network mounts, Windows): train unguarded rather than not at all
        yield


def has_saved_state(run_dir: Path) -> bool:
    """Whether `run_dir` holds a saved epoch (its state file or the previous one) to resume from."""
    path = run_dir / STATE_FILE
    return path.is_file() or previous_state(path).is_file()


def load_resume_state(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int = 0,
    world_size: int = 1,
    scaler: torch.amp.GradScaler | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> tuple[Position, torch.Tensor | None, str]:
    """Restore from run_dir/state.safetensors, falling back to the previous state file if it is corrupt.

    Returns the position, this rank's data/augmentation generator state, and a note on what was used.
    """
    path = run_dir / STATE_FILE
    if not has_saved_state(run_dir):
        if (run_dir / "settings.json").is_file():  # killed before its first epoch ended: nothing to lose
            return Position(), None, f"No epoch of {run_dir} was saved; starting it from the beginning"
        raise CheckpointError(f"No {STATE_FILE} in {run_dir}; --resume needs a run folder written by `cxrseg train`.")
    note = f"Resuming from {path}"
    try:
        extra, tensors = load_state(path, optimizer)
    except CheckpointError as exc:
        fallback = previous_state(path)
        if not fallback.is_file():
            raise
        try:
            extra, tensors = load_state(fallback, optimizer)
        except CheckpointError:
            raise CheckpointError(f"{exc} The previous state {fallback} is unreadable too; start a new run.") from exc
        note = f"{exc} Resuming from the previous good state {fallback} instead."
    saved_world = extra.get("world_size", 1)
    if saved_world != world_size:
        raise CheckpointError(
            f"{run_dir} was trained with {saved_world} process(es); resume it with the same number (now {world_size}), "
            "so that the data order and batch positions carry on exactly."
        )
    if scaler is not None and extra.get("scaler"):
        scaler.load_state_dict(extra["scaler"])
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    unwrap(model).load_state_dict(weights)
    if ema is not None:
        if "ema_steps" not in tensors:
            raise CheckpointError(f"{path} holds no moving average of the weights; resume without train.ema_decay.")
        ema.module.load_state_dict({k.removeprefix("ema."): v for k, v in tensors.items() if k.startswith("ema.")})
        ema.n_averaged.copy_(tensors["ema_steps"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    version, internal, gauss = extra["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = extra["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return Position(**extra["position"]), tensors.get(f"rng.generator.{rank}"), note


def environment(device: torch.device, dtype: torch.dtype | None, world_size: int = 1) -> dict[str, Any]:
    return {
        "cxrseg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "autocast": str(dtype).replace("torch.", "") if dtype else "fp32",
        "threads": torch.get_num_threads(),
        "world_size": world_size,
    }


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill is dropped
            rows.append(json.loads(line))
    return rows


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    save_png(plot_progress(read_metrics(run_dir)), run_dir / "progress.png")


def trim_metrics(run_dir: Path, epochs_done: int) -> None:
    """Drop lines of epochs a resumed run will redo (written after the last saved state)."""
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= epochs_done]
    write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def resumed_settings(run_dir: Path) -> Settings:
    """The settings a run was started with, from its settings.json."""
    path = run_dir / "settings.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no settings.json; --resume takes a run folder made by `cxrseg train`.")
    try:
        return settings_from_json(json.loads(path.read_text()))
    except ValueError as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}).") from exc
