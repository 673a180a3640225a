"""Run control for training: seeding, the LR schedule, per-epoch batches, run folders and stop signals."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from cxrseg.errors import TrainingError
from cxrseg.files import output_error


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


LR_FLOOR = 0.01  # the cosine ends at 1% of the peak learning rate


def lr_factor(step: int, total: int, warmup: int, anchor: int | None = None, anchor_phase: float = 0.0) -> float:
    """Linear warm-up to 1 over `warmup` steps, then a cosine decay to LR_FLOOR at step `total`.

    The cosine's phase runs from `anchor_phase` at step `anchor` (default: 0 at the end of the warm-up) to 1 at
    `total`, so a resume that changes `total` continues the curve from where it was, stretched over the new
    remaining steps.
    """
    if step < warmup:
        return (step + 1) / warmup
    anchor = warmup if anchor is None else anchor
    phase = anchor_phase + (1 - anchor_phase) * (step - anchor) / max(1, total - anchor)
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, phase)))


class LRSchedule:
    """The LambdaLR factor of a run. A callable object, so LambdaLR's state_dict saves its fields with the state."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup = total, warmup
        self.anchor, self.anchor_phase = warmup, 0.0

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total, self.warmup, self.anchor, self.anchor_phase)

    def stretch(self, step: int, total: int) -> None:
        """Resume at `step` with a new `total`: keep the warm-up, continue the cosine from its phase at `step`."""
        if total == self.total:
            return
        if step >= self.warmup:
            progress = (step - self.anchor) / max(1, self.total - self.anchor)
            self.anchor_phase = min(1.0, self.anchor_phase + (1 - self.anchor_phase) * progress)
            self.anchor = step
        self.total = total


def new_run_dir(runs_dir: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{i}" for i in range(1, 1000))]:
        path = runs_dir / f"{stamp}{suffix}"
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        except OSError as exc:  # a file where the runs folder should be, a read-only or full disk
            raise output_error(runs_dir, exc) from exc
        return path
    raise TrainingError(f"Could not create a new run folder in {runs_dir}; clean it up.")


def epoch_batches(sampler: DistributedSampler, epoch: int, batch_size: int) -> list[list[int]]:
    """This rank's batches for `epoch`: a seeded shuffle that depends only on (seed, epoch)."""
    sampler.set_epoch(epoch)
    order = list(sampler)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # batch norm needs two samples
        batches.pop()
    return batches


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, int]]:
    """Ctrl-C / SIGTERM set a flag the loop checks after each step; a second Ctrl-C aborts at once."""
    flag = {"signal": 0}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: object) -> None:
        if flag["signal"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
