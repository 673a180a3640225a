"""`cxrseg train`: flags to settings, then cxrseg.training.loop.train with a progress view."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from cxrseg.cli.common import console, flag_settings, progress_bar
from cxrseg.config import Device, with_overrides

RESUMABLE = {"epochs", "max_time", "patience", "device"}


def train(
    ctx: typer.Context,
    data: Annotated[
        list[Path] | None,
        typer.Option(
            help="Dataset folder with image/ and mask/ (test_image/ and test_mask/ are never read); repeat the flag "
            "to combine folders, each keeping its own validation split."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default 3).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step and process (default 16).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate of AdamW.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Model input size: a multiple of 16 and of 2**depth.")] = None,
    base_channels: Annotated[int | None, typer.Option(help="U-Net width of the first level.")] = None,
    depth: Annotated[int | None, typer.Option(help="U-Net pooling steps.")] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Where run folders are created.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[Device | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, bf16, fp16 or fp32.")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after N epochs without validation Dice gain.")] = None,
    max_time: Annotated[str | None, typer.Option(help="Time budget: 90s, 30m, 2h; ends after the epoch.")] = None,
    deterministic: Annotated[bool | None, typer.Option("--deterministic", help="Bit-reproducible on CPU.")] = None,
    no_augment: Annotated[bool | None, typer.Option("--no-augment", help="Switch augmentation off.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run folder after its last saved step.")] = None,
    init_from: Annotated[
        str | None,
        typer.Option(help="Fine-tune: start from `pretrained` (the bundled model) or a checkpoint file, in its shape."),
    ] = None,
) -> None:
    """Train a lung U-Net; writes checkpoints, metrics.jsonl, progress.png and previews to a run folder.

    Under `torchrun --nproc-per-node N -m cxrseg train ...` it trains with DistributedDataParallel.
    """
    from cxrseg.training.distributed import from_torchrun, teardown
    from cxrseg.training.loop import train as run_training
    from cxrseg.training.state import resumed_settings

    flags = {
        "data": {"root": data or None},
        "preprocess": {"image_size": image_size},
        "model": {"base_channels": base_channels, "depth": depth},
        "augment": {"enabled": False if no_augment else None},
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "runs_dir": runs_dir,
            "seed": seed,
            "device": device,
            "precision": precision,
            "patience": patience,
            "max_time": max_time,
            "deterministic": deterministic,
            "init_from": init_from,
        },
    }
    if resume is None:
        settings = flag_settings(ctx, flags)
    else:
        fixed = sorted(
            f"{section}.{k}"
            for section, values in flags.items()
            for k, v in values.items()
            if v is not None and not (section == "train" and k in RESUMABLE)
        )
        if fixed:
            raise typer.BadParameter(
                f"{', '.join(fixed)} cannot change when resuming; only "
                f"--epochs, --max-time, --patience and --device can.",
                param_hint="--resume",
            )
        settings = with_overrides(resumed_settings(resume), {"train": flags["train"]})
    dist_ctx = from_torchrun(os.environ)
    view = progress_bar() if dist_ctx.is_main else contextlib.nullcontext()
    try:
        with view as progress:
            result = run_training(settings, _TrainView(progress) if progress else None, resume_dir=resume, ctx=dist_ctx)
    finally:
        teardown(dist_ctx)
    if dist_ctx.is_main:
        console.print(
            f"[green]Done[/green] ({result.stop_reason}): best validation Dice {result.best_dice:.4f} at "
            f"epoch {result.best_epoch}. Checkpoint: {result.run_dir / 'best.safetensors'}"
        )


class _TrainView:
    """Draws train progress from the library's callbacks."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = None
        self.steps = 0

    def on_status(self, message: str) -> None:
        console.print(message)

    def on_start(self, run_dir: Path, steps_per_epoch: int, n_train: int, n_val: int, note: str) -> None:
        console.print(f"Run folder [bold]{run_dir}[/bold]: {n_train} train / {n_val} validation images; {note}")
        self.steps = steps_per_epoch

    def on_step(self, epoch: int, step: int, loss: float, images_per_s: float) -> None:
        if self.task is None or step == 1:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"epoch {epoch}", total=self.steps, info="")
        self.progress.update(self.task, completed=step, info=f"loss {loss:.4f}  {images_per_s:.1f} img/s")

    def on_epoch(self, report) -> None:
        table = Table(show_edge=False, box=None, pad_edge=False)
        for column in ("epoch", "train loss", "val Dice", "val IoU", "best Dice", "lr", "img/s", "time"):
            table.add_column(column, justify="right")
        star = " *" if report.is_best else ""
        table.add_row(
            f"{report.epoch}/{report.epochs}",
            f"{report.train_loss:.4f}",
            f"{report.val_dice:.4f}{star}",
            f"{report.val_iou:.4f}",
            f"{report.best_dice:.4f}",
            f"{report.lr:.2e}",
            f"{report.images_per_s:.1f}",
            f"{report.seconds:.1f}s",
        )
        self.progress.console.print(table)
