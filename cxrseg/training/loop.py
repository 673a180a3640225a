"""Training loop: cached data, batched augmentation, bf16 autocast, validation, checkpoints, resume, DDP."""

from __future__ import annotations

import contextlib
import math
import shlex
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cxrseg.augment import augment_batch
from cxrseg.checkpoint import CheckpointInfo, save_checkpoint
from cxrseg.config import Settings
from cxrseg.device import autocast
from cxrseg.errors import TrainingError, TrainingInterrupted
from cxrseg.inference.engine import engine_for
from cxrseg.inference.evaluate import score_batch
from cxrseg.inference.render import preview_sheet, save_png
from cxrseg.losses import segmentation_loss
from cxrseg.preprocess import normalize
from cxrseg.training.data import TrainingData
from cxrseg.training.distributed import Distributed, all_sum, broadcast_object, sync_buffers
from cxrseg.training.saved_images import FOLDER, save_validation_images
from cxrseg.training.schedule import epoch_batches, stop_on_signals
from cxrseg.training.setup import Run, set_up
from cxrseg.training.state import append_metrics, lock_run


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    train_loss: float
    val_dice: float
    val_iou: float
    best_dice: float
    is_best: bool
    lr: float
    images_per_s: float
    seconds: float
    val_dice_by_folder: dict[str, float] | None = None


@dataclass
class TrainResult:
    run_dir: Path
    best_dice: float
    best_epoch: int
    epochs_run: int
    stop_reason: str


class TrainCallbacks:
    """Progress hooks; the CLI draws bars and tables from them. Library code prints nothing."""

    def on_status(self, message: str) -> None: ...

    def on_start(self, run_dir: Path, steps_per_epoch: int, n_train: int, n_val: int, note: str) -> None: ...

    def on_step(self, epoch: int, step: int, loss: float, images_per_s: float) -> None: ...

    def on_epoch(self, report: EpochReport) -> None: ...


def validate(model, data: TrainingData, settings: Settings, device, dtype, ctx: Distributed):
    """Mean Dice and IoU over all ranks' shards at the masks' own resolution, Dice per folder, and preview rows."""
    model.eval()
    sync_buffers(model, ctx)
    val = data.val
    engine = engine_for(model, settings, settings.inference.model_copy(update={"tta": False}), device=device)
    scores, bs = [], settings.inference.batch_size
    for start in range(0, len(val.pairs), bs):
        sl = slice(start, start + bs)
        scores += score_batch(
            engine, val.images[sl], val.valid[sl], val.geometries[sl], data.truths[sl], with_hd95=False
        )
    n_folders = len(data.folders)
    sums = [0.0] * (3 * n_folders)  # per folder: Dice sum, IoU sum, count
    for folder, item in zip(data.val_folder, scores, strict=True):
        sums[3 * folder] += item.dice
        sums[3 * folder + 1] += item.iou
        sums[3 * folder + 2] += 1
    sums = all_sum(sums, ctx, device)
    n = max(sum(sums[2::3]), 1)
    by_folder = {str(f): sums[3 * i] / max(sums[3 * i + 2], 1) for i, f in enumerate(data.folders)}
    k = min(settings.train.previews, len(val.pairs)) if ctx.is_main else 0
    previews = []
    if k:
        probs = engine.forward(val.images[:k], val.valid[:k])
        previews = [
            (val.images[i, 0].numpy(), val.masks[i, 0].numpy() > 0.5, probs[i, 0].numpy() > 0.5) for i in range(k)
        ]
    return sum(sums[0::3]) / n, sum(sums[1::3]) / n, by_folder, previews


def train(
    settings: Settings,
    callbacks: TrainCallbacks | None = None,
    *,
    resume_dir: Path | None = None,
    ctx: Distributed | None = None,
) -> TrainResult:
    """Train a U-Net on the train split of each settings.data.root folder, choosing on their val split.

    The folders' test pairs are never read. Writes a new run folder (or continues `resume_dir`), holding its
    lock file until it returns, so that no second `train` of the same run can write beside it.
    """
    with contextlib.ExitStack() as held:
        return _train(settings, callbacks, resume_dir, ctx or Distributed(), held)


def _train(
    settings: Settings,
    callbacks: TrainCallbacks | None,
    resume_dir: Path | None,
    ctx: Distributed,
    held: contextlib.ExitStack,
) -> TrainResult:
    if resume_dir is not None and ctx.is_main:
        held.enter_context(lock_run(resume_dir))  # before the data is decoded: a second train stops at once
    cb = callbacks if callbacks is not None and ctx.is_main else TrainCallbacks()
    run = set_up(settings, cb, resume_dir, ctx, held)
    cfg, position = run.settings.train, run.position
    stop_reason, time_started, epoch = "completed", time.perf_counter(), position.epochs_done
    with stop_on_signals() as stop:
        for epoch in range(position.epochs_done + 1, cfg.epochs + 1):
            epoch_started = time.perf_counter()
            seen = _train_epoch(run, epoch, stop)
            _end_epoch(run, epoch, seen, epoch_started)
            elapsed = time.perf_counter() - time_started
            if cfg.patience and epoch - position.best_epoch >= cfg.patience:
                stop_reason = f"early stop: no validation Dice gain for {cfg.patience} epochs"
            elif cfg.max_time and epoch < cfg.epochs and broadcast_object(elapsed >= cfg.max_time, ctx):
                stop_reason = f"time budget: --max-time {cfg.max_time:.0f}s reached after epoch {epoch}"
            if stop_reason != "completed":
                break
    if cfg.save_images and ctx.is_main:
        run.cb.on_status(f"Saving the best checkpoint's validation predictions to {run.run_dir / FOLDER}")
        save_validation_images(run.run_dir, run.settings)
    return TrainResult(run.run_dir, position.best_dice, position.best_epoch, epoch, stop_reason)


def _train_epoch(run: Run, epoch: int, stop: dict[str, int]) -> int:
    """The optimiser steps of one epoch, from where `run.position` stands; returns the images seen."""
    settings, ctx, position, train_set = run.settings, run.ctx, run.position, run.data.train
    cfg, device = settings.train, run.device
    run.net.train()
    epoch_started, seen = time.perf_counter(), 0
    batches = epoch_batches(run.sampler, epoch, cfg.batch_size)
    for step in range(position.step, len(batches)):
        index = torch.tensor(batches[step])
        images, masks, valid = train_set.images[index], train_set.masks[index], train_set.valid[index]
        if train_set.ignored is not None:  # ignore masks: a second channel, warped with the lung mask
            masks = torch.cat([masks, train_set.ignored[index]], dim=1)
        if settings.augment.enabled:
            images, masks, valid = augment_batch(images, masks, valid, settings.augment, run.generator)
        scored = valid * (1 - masks[:, 1:]) if masks.shape[1] > 1 else valid  # the ignored pixels are not scored
        masks = masks[:, :1]
        x = normalize(images, valid).to(device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, run.dtype):
            logits = run.net(x)
        loss = segmentation_loss(logits, masks.to(device), scored.to(device), cfg.dice_weight, cfg.hard_pixel_fraction)
        loss_sum, stop_votes = all_sum([loss.item(), float(stop["signal"])], ctx, device)
        if not math.isfinite(loss_sum):
            last = run.run_dir / "last.safetensors"
            kept = f"The last good checkpoint is {last}. " if last.is_file() else "No epoch had finished. "
            raise TrainingError(
                f"Loss became {loss_sum} at epoch {epoch}, step {step + 1}; stopped. {kept}"
                "Lower --lr or use --precision fp32."
            )
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()  # loss scaling only for fp16; a no-op otherwise
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        position.step, seen = step + 1, seen + len(index)
        position.loss_sum += loss_sum / ctx.world_size
        position.loss_count += 1
        run.cb.on_step(epoch, step + 1, loss_sum / ctx.world_size, seen / (time.perf_counter() - epoch_started))
        if stop_votes:
            run.save_state()
            name = "Ctrl-C" if stop["signal"] == signal.SIGINT else "SIGTERM"
            raise TrainingInterrupted(
                f"Stopped by {name} at epoch {epoch}, step {step + 1}; state saved. "
                f"Resume with: cxrseg train --resume {shlex.quote(str(run.run_dir))}",
                130 if stop["signal"] == signal.SIGINT else 143,
            )
    return seen


def _end_epoch(run: Run, epoch: int, seen: int, epoch_started: float) -> EpochReport:
    """Validate, record the epoch, write last/best checkpoints, previews and the resumable state."""
    settings, position, cfg = run.settings, run.position, run.settings.train
    train_seconds = time.perf_counter() - epoch_started
    val_dice, val_iou, by_folder, previews = validate(run.scored, run.data, settings, run.device, run.dtype, run.ctx)
    is_best = val_dice > position.best_dice
    if is_best:
        position.best_dice, position.best_epoch = val_dice, epoch
    train_loss = position.loss_sum / max(1, position.loss_count)
    position.epochs_done, position.step, position.loss_sum, position.loss_count = epoch, 0, 0.0, 0
    report = EpochReport(
        epoch,
        cfg.epochs,
        train_loss,
        val_dice,
        val_iou,
        position.best_dice,
        is_best,
        run.optimizer.param_groups[0]["lr"],
        seen / train_seconds,
        time.perf_counter() - epoch_started,
        by_folder if len(by_folder) > 1 else None,
    )
    if run.ctx.is_main:
        info = CheckpointInfo(
            settings=settings,
            epoch=epoch,
            metrics={"val_dice": val_dice, "val_iou": val_iou, "train_loss": train_loss, "split": "val"},
            trained_on=run.data.trained_on,
        )
        save_checkpoint(run.run_dir / "last.safetensors", run.scored, info)
        if is_best:
            save_checkpoint(run.run_dir / "best.safetensors", run.scored, info)
        if previews:
            save_png(preview_sheet(previews), run.run_dir / "previews" / f"epoch_{epoch:03d}.png")
        append_metrics(run.run_dir, asdict(report))
    run.save_state()
    run.cb.on_epoch(report)
    return report
