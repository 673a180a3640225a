"""The `cxrseg` command: builds Settings once, thin commands over library functions, all rich output."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cxrseg import __version__
from cxrseg.config import Device, Settings, load_settings, with_overrides
from cxrseg.errors import CxrsegError

app = typer.Typer(
    help="Lung-field segmentation of chest X-rays with a U-Net.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
stdout = Console()
_debug = {"on": os.environ.get("CXRSEG_DEBUG", "").lower() in ("1", "true", "yes")}


def _settings(ctx: typer.Context, overrides: dict[str, Any]) -> Settings:
    return with_overrides(ctx.obj, overrides)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"cxrseg {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file (flags > env > file).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    """Settings come from flags, CXRSEG_* environment variables, a --config file, then defaults."""
    _debug["on"] = _debug["on"] or debug
    ctx.obj = load_settings(config)
    _debug["on"] = _debug["on"] or ctx.obj.debug


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


RESUMABLE = {"epochs", "max_time", "patience", "device"}


@app.command()
def train(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Dataset folder: image/ mask/ [test_image/ test_mask/].")] = None,
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
) -> None:
    """Train a lung U-Net; writes checkpoints, metrics.jsonl, progress.png and previews to a run folder.

    Under `torchrun --nproc-per-node N -m cxrseg train ...` it trains with DistributedDataParallel.
    """
    from cxrseg.distributed import from_torchrun, teardown
    from cxrseg.train import train as run_training
    from cxrseg.trainstate import resumed_settings

    flags = {
        "data": {"root": data},
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
        },
    }
    if resume is None:
        settings = _settings(ctx, flags)
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
    view = _progress() if dist_ctx.is_main else contextlib.nullcontext()
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


@app.command()
def evaluate(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint; default: newest run's best, else bundled.")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: settings data.root).")] = None,
    split: Annotated[str, typer.Option(help="test (validation), train, or all pairs found.")] = "test",
    runs_dir: Annotated[Path | None, typer.Option(help="Where to look for the newest run.")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="Write per-image rows to this CSV file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Average with a flipped prediction.")] = None,
    postprocess: Annotated[bool | None, typer.Option("--postprocess/--no-postprocess", help="Clean masks.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per forward pass.")] = None,
    device: Annotated[Device | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
) -> None:
    """Score a checkpoint: Dice, IoU, precision, recall, HD95, ASSD per image at the mask's own resolution."""
    from cxrseg.checkpoint import default_checkpoint, load_checkpoint
    from cxrseg.data import select_pairs
    from cxrseg.evaluate import evaluate_model, write_csv
    from cxrseg.metrics import DISTANCE_METRICS

    if split not in ("test", "train", "all"):
        raise typer.BadParameter("use test, train or all", param_hint="--split")
    settings = _settings(
        ctx,
        {
            "data": {"root": data},
            "train": {"runs_dir": runs_dir},
            "inference": {"tta": tta, "postprocess": postprocess, "batch_size": batch_size, "device": device},
        },
    )
    if checkpoint is None:
        checkpoint, why = default_checkpoint(settings.train.runs_dir)
        console.print(why, markup=False, highlight=False)
    model, info = load_checkpoint(checkpoint)
    # the checkpoint's own split rule, so a seeded split never scores images the model was trained on
    trained = info.settings.data
    pairs = select_pairs(settings.data.root, split, trained.val_fraction, trained.split_seed)
    with _progress() as progress:
        task = progress.add_task("evaluate", total=len(pairs), info="")
        result = evaluate_model(
            model, info.settings, pairs, settings.inference, on_advance=lambda n: progress.advance(task, n)
        )
    if csv:
        write_csv(result, csv)
        console.print(f"Per-image scores written to {csv}")
    if as_json:
        stdout.print_json(json.dumps(result.as_json() | {"checkpoint": str(checkpoint), "split": split}))
        return
    stdout.print(f"Checkpoint {checkpoint}", markup=False, highlight=False, soft_wrap=True)
    table = Table(title=f"{len(result.rows)} images, split '{split}'")
    for column in ("metric", "mean", "sd", "median", "n"):
        table.add_column(column, justify="right")
    for name, stats in result.summary.items():
        distance = name in DISTANCE_METRICS
        digits = 2 if distance else 4
        table.add_row(
            name + (" (px)" if distance else ""),
            f"{stats['mean']:.{digits}f}",
            f"{stats['sd']:.{digits}f}",
            f"{stats['median']:.{digits}f}",
            str(stats["n"]),
        )
    stdout.print(table)


def main() -> None:
    """Console entry point: typed errors become one red line and exit code 1."""
    try:
        app()
    except CxrsegError as exc:
        if _debug["on"]:
            raise
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        console.print("[red]Interrupted.[/red]")
        sys.exit(130)


from cxrseg import cli_download, cli_predict  # noqa: E402,F401  (register `cxrseg download` and `predict`)
