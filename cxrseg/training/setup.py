"""Setting up a training run: data, model, optimiser, schedule, and a new or resumed run folder."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DistributedSampler

from cxrseg.checkpoint import FILM_KEY, build_model, read_info
from cxrseg.config import Settings
from cxrseg.device import amp_dtype, resolve_device
from cxrseg.errors import CxrsegError, DataError
from cxrseg.files import write_text
from cxrseg.training.data import TrainingData, load_training_data
from cxrseg.training.distributed import Distributed, broadcast_object, gather_objects, setup
from cxrseg.training.init import apply_init
from cxrseg.training.schedule import LRSchedule, epoch_batches, new_run_dir, seed_everything
from cxrseg.training.state import (
    Position,
    environment,
    has_saved_state,
    load_resume_state,
    lock_run,
    save_resume_state,
    trim_metrics,
)

if TYPE_CHECKING:
    from cxrseg.training.loop import TrainCallbacks


@dataclass
class Run:
    """Everything one training run holds between its steps."""

    settings: Settings
    ctx: Distributed
    cb: TrainCallbacks
    device: torch.device
    dtype: torch.dtype | None
    data: TrainingData
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: DistributedSampler
    generator: torch.Generator
    scaler: torch.amp.GradScaler
    run_dir: Path
    position: Position
    ema: AveragedModel | None = None

    @property
    def scored(self) -> torch.nn.Module:
        """The weights that are validated and saved: the moving average when train.ema_decay is set."""
        return self.ema.module if self.ema is not None else self.model

    def save_state(self) -> None:
        states = gather_objects(self.generator.get_state(), self.ctx)
        if self.ctx.is_main:
            save_resume_state(
                self.run_dir, self.model, self.optimizer, self.scheduler, self.position, states, self.scaler, self.ema
            )


def set_up(
    settings: Settings, cb: TrainCallbacks, resume_dir: Path | None, ctx: Distributed, held: contextlib.ExitStack
) -> Run:
    """Decode the data, build the model and optimiser, and open a new run folder or restore `resume_dir`."""
    if settings.train.lr is None:  # the rate used is written down: a run's settings and checkpoints name it
        train = settings.train.model_copy(update={"lr": settings.train.peak_lr})
        settings = settings.model_copy(update={"train": train})
    cfg = settings.train
    seed_everything(cfg.seed, cfg.deterministic)
    device = setup(ctx, resolve_device(cfg.device))
    dtype = amp_dtype(device, cfg.precision)
    if resume_dir is not None and has_saved_state(resume_dir):
        # the run's state holds the weights, settings.json the checkpoint's shape and split, and its last
        # checkpoint the films learnt so far (those of the --init-from checkpoint among them)
        init_weights, learnt = None, _learnt_by(resume_dir)
    else:
        asked = settings.data
        settings, init_weights, learnt = apply_init(settings)
        if settings.data != asked and cb.on_status:
            d = settings.data
            cb.on_status(
                f"Split: the --init-from checkpoint's (data.split_rule {d.split_rule}, val_fraction "
                f"{d.val_fraction}, split_seed {d.split_seed}), as a --data folder holds films it was trained on"
            )
    started = time.perf_counter()
    data = load_training_data(settings, ctx.rank, ctx.world_size, cb.on_status, learnt)
    load_seconds = time.perf_counter() - started

    model = build_model(settings)
    if init_weights is not None:
        model.load_state_dict(init_weights)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if ctx.enabled
        else model
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    sampler = DistributedSampler(
        range(len(data.train.pairs)), ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed, drop_last=ctx.enabled
    )
    steps_per_epoch = len(epoch_batches(sampler, 0, cfg.batch_size))
    if steps_per_epoch == 0:
        raise DataError(f"{data.folders[0]}: too few train pairs for one step of --batch-size {cfg.batch_size}.")
    total_steps = steps_per_epoch * cfg.epochs
    schedule = LRSchedule(total_steps, max(1, int(cfg.warmup_fraction * total_steps)))
    generator = torch.Generator().manual_seed(cfg.seed * 1009 + ctx.rank)  # augmentation draws
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    run = Run(
        settings, ctx, cb, device, dtype, data, model, net, optimizer, scheduler, sampler, generator, scaler,
        Path(), Position(), _moving_average(model, cfg.ema_decay),
    )  # fmt: skip
    note = _open_run_dir(run, resume_dir, schedule, total_steps, held)
    precision = "fp32" if dtype is None else str(dtype).replace("torch.", "")
    note = "; ".join(
        filter(
            None,
            [
                note,
                f"{device} x{ctx.world_size}, {precision}, data decoded in {load_seconds:.1f}s",
                moving_average_note(cfg.ema_decay, total_steps),
            ],
        )
    )
    cb.on_start(run.run_dir, steps_per_epoch, len(data.train.pairs), data.n_val, note)
    return run


TRAINED_ON_FILE = "trained_on.txt"  # a run's film keys as it started: its start's learnt films and its `train`


def _learnt_by(run_dir: Path) -> frozenset[str]:
    """The film keys a resumed run had learnt: those written when it started (so a run stopped in its first
    epoch, before any checkpoint, keeps its start's) and those its last checkpoint records."""
    keys: set[str] = set()
    with contextlib.suppress(OSError):
        keys |= {key for key in (run_dir / TRAINED_ON_FILE).read_text().split() if FILM_KEY.fullmatch(key)}
    with contextlib.suppress(CxrsegError):
        keys |= read_info(run_dir / "last.safetensors").trained_on
    return frozenset(keys)


def _open_run_dir(
    run: Run, resume_dir: Path | None, schedule: LRSchedule, total_steps: int, held: contextlib.ExitStack
) -> str:
    """Restore `resume_dir`'s state into `run`, or create and lock a new run folder; returns the resume note."""
    ctx, note = run.ctx, ""
    if resume_dir is not None:
        run.run_dir = resume_dir
        run.position, generator_state, note = load_resume_state(
            resume_dir, run.model, run.optimizer, run.scheduler, ctx.rank, ctx.world_size, run.scaler, run.ema
        )
        if generator_state is not None:
            run.generator.set_state(generator_state)
        schedule.stretch(run.scheduler.last_epoch, total_steps)  # a new --epochs continues the decay
        if ctx.is_main:
            trim_metrics(resume_dir, run.position.epochs_done)
    else:
        run.run_dir = broadcast_object(new_run_dir(run.settings.train.runs_dir) if ctx.is_main else None, ctx)
        if ctx.is_main:
            held.enter_context(lock_run(run.run_dir))
            write_text(run.run_dir / TRAINED_ON_FILE, " ".join(sorted(run.data.trained_on)) + "\n")
    if ctx.is_main:
        environment_json = json.dumps(environment(run.device, run.dtype, ctx.world_size), indent=2)
        write_text(run.run_dir / "settings.json", run.settings.model_dump_json(indent=2))
        write_text(run.run_dir / "environment.json", environment_json)
    return note


def _moving_average(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of the weights and batch-norm statistics, updated after each step.

    Integer buffers (batch-norm step counts) are copied: an average of counts is not a count.
    """
    if decay <= 0:
        return None
    blend = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], steps: torch.Tensor) -> None:
        if averaged[0].is_floating_point():  # AveragedModel groups the tensors by dtype
            blend(averaged, current, steps)
        else:
            for kept, now in zip(averaged, current, strict=True):
                kept.copy_(now)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def moving_average_note(decay: float, total_steps: int) -> str:
    """A warning when the weights of the first step still weigh much in the run's final average."""
    if decay <= 0 or decay**total_steps <= 0.1:
        return ""
    return (
        f"with --ema-decay {decay} the first step's weights still make {decay**total_steps:.0%} of the final "
        f"average after {total_steps} steps; lower the decay or train longer"
    )
