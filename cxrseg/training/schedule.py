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


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 1% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def new_run_dir(runs_dir: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{i}" for i in range(1, 1000))]:
        with contextlib.suppress(FileExistsError):
            (runs_dir / f"{stamp}{suffix}").mkdir(parents=True)
            return runs_dir / f"{stamp}{suffix}"
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
