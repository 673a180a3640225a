"""Training loop: cached data, batched augmentation, bf16 autocast, per-epoch validation and checkpoints."""

from __future__ import annotations

import json
import math
import platform
import random
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from cxrseg import __version__
from cxrseg.augment import augment_batch
from cxrseg.checkpoint import Checkpoint, build_model, save_checkpoint, save_state
from cxrseg.config import Settings
from cxrseg.data import CachedSet, dataset_splits, load_pairs, normalize
from cxrseg.errors import TrainingError
from cxrseg.evaluate import score_batch
from cxrseg.imaging import read_mask
from cxrseg.inference import amp_dtype, autocast, resolve_device
from cxrseg.losses import segmentation_loss
from cxrseg.render import preview_sheet, save_png


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


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
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
        candidate = runs_dir / f"{stamp}{suffix}"
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise TrainingError(f"Could not create a new run folder in {runs_dir}; clean it up.")


def environment(device: torch.device, dtype: torch.dtype | None, world_size: int = 1) -> dict[str, object]:
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


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:  # batch norm needs two samples
        batches.pop()
    return batches


def validate(model, val: CachedSet, truths, settings: Settings, device, dtype) -> tuple[float, float, list]:
    """Mean Dice and IoU at the masks' own resolution, plus a few preview rows."""
    model.eval()
    cfg = settings.inference.model_copy(update={"tta": False})
    scores = []
    bs = settings.inference.batch_size
    for start in range(0, len(val.pairs), bs):
        sl = slice(start, start + bs)
        scores += score_batch(
            model, val.images[sl], val.valid[sl], val.geometries[sl], truths[sl], cfg, device, dtype, with_hd95=False
        )
    previews = []
    if settings.train.previews:
        from cxrseg.inference import forward_probabilities

        k = min(settings.train.previews, len(val.pairs))
        probs = forward_probabilities(model, val.images[:k], val.valid[:k], device, dtype)
        previews = [
            (val.images[i, 0].numpy(), val.masks[i, 0].numpy() > 0.5, probs[i, 0].numpy() > 0.5) for i in range(k)
        ]
    return float(np.mean([s.dice for s in scores])), float(np.mean([s.iou for s in scores])), previews


def train(settings: Settings, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Train a U-Net on settings.data.root and write a run folder; returns where and how well."""
    cb = callbacks or TrainCallbacks()
    cfg = settings.train
    seed_everything(cfg.seed, cfg.deterministic)
    device = resolve_device(cfg.device)
    dtype = amp_dtype(device, cfg.precision)
    splits = dataset_splits(settings.data.root, settings.data.val_fraction, settings.data.split_seed)
    size = settings.preprocess.image_size

    cb.on_status(f"Decoding {len(splits['train'])} train and {len(splits['test'])} validation pairs at {size}px")
    started = time.perf_counter()
    train_set = load_pairs(splits["train"], size)
    val_set = load_pairs(splits["test"], size)
    truths = [read_mask(p.mask) for p in splits["test"]]
    load_seconds = time.perf_counter() - started

    model = build_model(settings).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = len(_batches(len(train_set.pairs), cfg.batch_size, torch.Generator()))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup))

    run_dir = new_run_dir(cfg.runs_dir)
    (run_dir / "settings.json").write_text(settings.model_dump_json(indent=2))
    (run_dir / "environment.json").write_text(json.dumps(environment(device, dtype), indent=2))
    note = f"{device}, {'fp32' if dtype is None else str(dtype).replace('torch.', '')}, data decoded in {load_seconds:.1f}s"
    cb.on_start(run_dir, steps_per_epoch, len(train_set.pairs), len(val_set.pairs), note)

    best_dice, best_epoch, stop_reason, epoch = -1.0, 0, "completed", 0
    time_started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        epoch_started = time.perf_counter()
        losses, seen = [], 0
        for step, index in enumerate(_batches(len(train_set.pairs), cfg.batch_size, generator)):
            images, masks, valid = train_set.images[index], train_set.masks[index], train_set.valid[index]
            if settings.augment.enabled:
                images, masks, valid = augment_batch(images, masks, valid, settings.augment, generator)
            x = normalize(images, valid).to(device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                logits = model(x)
            loss = segmentation_loss(logits, masks.to(device), cfg.dice_weight)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"Loss became {loss.item()} at epoch {epoch}, step {step + 1}; the last good checkpoint is in "
                    f"{run_dir}. Lower --lr or use --precision fp32."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            seen += len(index)
            cb.on_step(epoch, step + 1, losses[-1], seen / (time.perf_counter() - epoch_started))
        train_seconds = time.perf_counter() - epoch_started

        val_dice, val_iou, previews = validate(model, val_set, truths, settings, device, dtype)
        is_best = val_dice > best_dice
        if is_best:
            best_dice, best_epoch = val_dice, epoch
        metrics = {"val_dice": val_dice, "val_iou": val_iou, "train_loss": float(np.mean(losses))}
        info = Checkpoint(settings=settings, epoch=epoch, metrics=metrics)
        save_checkpoint(run_dir / "last.safetensors", model, info)
        if is_best:
            save_checkpoint(run_dir / "best.safetensors", model, info)
        save_state(
            run_dir / "state.safetensors",
            optimizer,
            {"epoch": epoch, "scheduler": scheduler.state_dict(), "best_dice": best_dice, "best_epoch": best_epoch},
        )
        if previews:
            save_png(preview_sheet(previews), run_dir / "previews" / f"epoch_{epoch:03d}.png")
        report = EpochReport(
            epoch,
            cfg.epochs,
            metrics["train_loss"],
            val_dice,
            val_iou,
            best_dice,
            is_best,
            optimizer.param_groups[0]["lr"],
            seen / train_seconds,
            time.perf_counter() - epoch_started,
        )
        with (run_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(asdict(report)) + "\n")
        cb.on_epoch(report)
        if cfg.patience and epoch - best_epoch >= cfg.patience:
            stop_reason = f"no validation Dice gain for {cfg.patience} epochs"
            break
        elapsed = time.perf_counter() - time_started
        if cfg.max_time and epoch < cfg.epochs and elapsed * (epoch + 1) / epoch > cfg.max_time:
            stop_reason = f"time budget of {cfg.max_time:.0f}s would be crossed by another epoch"
            break
    return TrainResult(run_dir, best_dice, best_epoch, epoch, stop_reason)
