"""`cxrseg train`: flags to settings, then cxrseg.training.loop.train with a progress view."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from cxrseg.cli.common import (
    ConfigOption,
    RootOptions,
    console,
    flag_settings,
    progress_bar,
    require_paths,
    say,
)
from cxrseg.cli.options import option
from cxrseg.config import Device, Precision
from cxrseg.config_sources import ENV_PREFIX, with_overrides

if TYPE_CHECKING:
    from cxrseg.training.loop import EpochReport

RESUMABLE = {"epochs", "max_time", "patience", "device", "save_images"}
RESUMABLE_FLAGS = "--epochs, --max-time, --patience, --device and --save-images"  # the flags of RESUMABLE
DATA, MODEL, OPTIMISATION, RUN, OUTPUT = "Data", "Model", "Optimisation", "Run control", "Output"

SampleData = Annotated[
    bool,
    option(
        "--sample",
        help="Add the 20 training pairs of the sample shipped with cxrseg to --data (a first run with no download).",
        default=False,
        flag=True,
        panel=DATA,
    ),
]
Data = Annotated[
    list[Path] | None,
    option(
        help="Dataset folder with image/ and mask/ [test_image/ test_mask/ are never read]; repeat the flag "
        "to combine folders, each keeping its own validation split.",
        setting="data.root",
        panel=DATA,
        metavar="<path>",
    ),
]
Augment = Annotated[
    bool | None,
    option(
        "--augment/--no-augment", help="Augment training batches.", setting="augment.enabled", panel=DATA, flag=True
    ),
]
ImageSize = Annotated[
    int | None,
    option(help="Model input size: a multiple of 16 and of 2**depth.", setting="preprocess.image_size", panel=MODEL),
]
TrimBorder = Annotated[
    bool | None,
    option(
        "--trim-border/--no-trim-border",
        help="Crop margins of one grey (a canvas, a frame, padding) off each film before fitting; kept in the model.",
        setting="preprocess.trim_border",
        panel=MODEL,
        flag=True,
    ),
]
BaseChannels = Annotated[
    int | None, option(help="U-Net width of the first level.", setting="model.base_channels", panel=MODEL)
]
Depth = Annotated[int | None, option(help="U-Net pooling steps.", setting="model.depth", panel=MODEL)]
InitFrom = Annotated[
    str | None,
    option(
        help="Fine-tune: start from `pretrained` (the bundled model) or a checkpoint file, in its shape.",
        setting="train.init_from",
        panel=MODEL,
    ),
]
Epochs = Annotated[int | None, option(help="Epochs.", setting="train.epochs", panel=OPTIMISATION)]
BatchSize = Annotated[
    int | None, option(help="Images per step and process.", setting="train.batch_size", panel=OPTIMISATION)
]
Lr = Annotated[
    float | None,
    option(help="Peak learning rate of AdamW.", default="1e-2; 1e-3 with --init-from", panel=OPTIMISATION),
]
EmaDecay = Annotated[
    float | None,
    option(
        help="Validate and save a moving average of the weights with this per-step decay (e.g. 0.99); 0: off.",
        setting="train.ema_decay",
        panel=OPTIMISATION,
    ),
]
PrecisionOption = Annotated[
    Precision | None,
    option(help="Autocast precision; auto picks bf16 where it is fast.", setting="train.precision", panel=OPTIMISATION),
]
Patience = Annotated[
    int | None, option(help="Stop after N epochs without validation Dice gain.", setting="train.patience", panel=RUN)
]
MaxTime = Annotated[
    str | None, option(help="Time budget: 90s, 30m, 2h; ends after the epoch.", setting="train.max_time", panel=RUN)
]
Seed = Annotated[int | None, option(help="Random seed.", setting="train.seed", panel=RUN)]
DeviceOption = Annotated[Device | None, option(help="Where to train.", setting="train.device", panel=RUN)]
Deterministic = Annotated[
    bool | None,
    option(
        "--deterministic/--no-deterministic",
        help="Bit-reproducible on CPU.",
        setting="train.deterministic",
        panel=RUN,
        flag=True,
    ),
]
Resume = Annotated[
    Path | None, option(help="Continue this run folder after its last saved step.", default="none", panel=RUN)
]
RunsDir = Annotated[Path | None, option(help="Where run folders are created.", setting="train.runs_dir", panel=OUTPUT)]
SaveImages = Annotated[
    bool | None,
    option(
        "--save-images/--no-save-images",
        help="After training, write saved_images/: validation overlays, error maps and a report.",
        setting="train.save_images",
        panel=OUTPUT,
        flag=True,
    ),
]
Previews = Annotated[
    int | None, option(help="Validation pictures saved per epoch.", setting="train.previews", panel=OUTPUT)
]


def train(
    ctx: typer.Context,
    data: Data = None,
    sample: SampleData = False,
    augment: Augment = None,
    image_size: ImageSize = None,
    trim_border: TrimBorder = None,
    base_channels: BaseChannels = None,
    depth: Depth = None,
    init_from: InitFrom = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    ema_decay: EmaDecay = None,
    precision: PrecisionOption = None,
    patience: Patience = None,
    max_time: MaxTime = None,
    seed: Seed = None,
    device: DeviceOption = None,
    deterministic: Deterministic = None,
    resume: Resume = None,
    runs_dir: RunsDir = None,
    previews: Previews = None,
    save_images: SaveImages = None,
    config: ConfigOption = None,
) -> None:
    """Train a lung U-Net; writes checkpoints, metrics.jsonl, progress.png and previews to a run folder.

    Under `torchrun --nproc-per-node N -m cxrseg train ...` it trains with DistributedDataParallel.
    """
    from cxrseg.training.distributed import from_torchrun, teardown
    from cxrseg.training.init import check_init_flags
    from cxrseg.training.loop import train as run_training

    require_paths(data, "--data", "pass a dataset folder with image/ and mask/, or run `cxrseg download`")
    if sample:
        from cxrseg.assets import SAMPLE_DIR

        data = [*(data or []), SAMPLE_DIR]
    require_paths(resume, "--resume", "pass a run folder made by `cxrseg train`")
    flags = {
        "data": {"root": data or None},
        "preprocess": {"image_size": image_size, "trim_border": trim_border},
        "model": {"base_channels": base_channels, "depth": depth},
        "augment": {"enabled": augment},
        "train": {
            **{"epochs": epochs, "batch_size": batch_size, "lr": lr, "runs_dir": runs_dir, "seed": seed},
            **{"device": device, "precision": precision, "patience": patience, "max_time": max_time},
            **{"deterministic": deterministic, "init_from": init_from, "previews": previews, "ema_decay": ema_decay},
            "save_images": save_images,
        },
    }
    settings = _settings(ctx, flags, resume, config)
    if resume is None:  # a resumed run has its shape in settings.json and its weights in its state
        check_init_flags(settings, flags)
    dist_ctx = from_torchrun(os.environ)
    view = progress_bar() if dist_ctx.is_main else contextlib.nullcontext()
    try:
        with view as progress:
            result = run_training(settings, _TrainView(progress) if progress else None, resume_dir=resume, ctx=dist_ctx)
    finally:
        teardown(dist_ctx)
    if dist_ctx.is_main:
        say(
            f"Done ({result.stop_reason}): best validation Dice {result.best_dice:.4f} at "
            f"epoch {result.best_epoch}. Checkpoint: {result.run_dir / 'best.safetensors'}"
        )


def _settings(ctx: typer.Context, flags: dict[str, dict[str, Any]], resume: Path | None, config: Path | None):
    """Fresh runs: settings from every source. Resumed runs: the run's own, where only RESUMABLE flags may change."""
    from cxrseg.training.state import resumed_settings

    if resume is None:
        return flag_settings(ctx, flags, config)
    fixed = sorted(
        f"{section}.{k}"
        for section, values in flags.items()
        for k, v in values.items()
        if v is not None and not (section == "train" and k in RESUMABLE)
    )
    if fixed:
        raise typer.BadParameter(
            f"{', '.join(fixed)} cannot change when resuming; only {RESUMABLE_FLAGS} can.",
            param_hint="--resume",
        )
    root = ctx.obj if isinstance(ctx.obj, RootOptions) else RootOptions()
    if config or root.config:
        raise typer.BadParameter(
            f"a resumed run takes its settings from {resume / 'settings.json'}, not from a config file; "
            f"only the flags {RESUMABLE_FLAGS} change them",
            param_hint="--config",
        )
    settings = with_overrides(resumed_settings(resume), {"train": flags["train"]})
    unused = sorted(name for name, value in os.environ.items() if _setting_variable(name) and value.strip())
    if unused:
        say(
            f"Resuming with {resume / 'settings.json'}: {', '.join(unused)} not applied "
            f"(only the flags {RESUMABLE_FLAGS} change a resumed run)."
        )
    return settings


def _setting_variable(name: str) -> bool:
    """A CXRSEG_* variable that sets a run's settings (CXRSEG_DEBUG only shows tracebacks)."""
    upper = name.upper()
    return upper.startswith(ENV_PREFIX) and upper != f"{ENV_PREFIX}DEBUG"


class _TrainView:
    """Draws train progress from the library's callbacks: a bar and a table in a terminal, plain lines in a log."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = None
        self.steps = 0

    def on_status(self, message: str) -> None:
        say(message)

    def on_start(self, run_dir: Path, steps_per_epoch: int, n_train: int, n_val: int, note: str) -> None:
        say(f"Run folder {run_dir}: {n_train} train / {n_val} validation images; {note}")
        self.steps = steps_per_epoch

    def on_step(self, epoch: int, step: int, loss: float, images_per_s: float) -> None:
        if self.task is None or step == 1:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"epoch {epoch}", total=self.steps, info="")
        self.progress.update(self.task, completed=step, info=f"loss {loss:.4f}  {images_per_s:.1f} img/s")

    def on_epoch(self, report: EpochReport) -> None:
        cells = _epoch_cells(report)
        if not console.is_terminal:
            say("  ".join(f"{name} {value}" for name, value in cells.items()))
            return
        table = Table(show_edge=False, box=None, pad_edge=False)
        for column in cells:
            table.add_column(escape(column), justify="right")
        table.add_row(*cells.values())
        self.progress.console.print(table)


def _epoch_cells(report: EpochReport) -> dict[str, str]:
    """One epoch's figures by column name; a star marks a new best validation Dice."""
    return {
        "epoch": f"{report.epoch}/{report.epochs}",
        "train loss": f"{report.train_loss:.4f}",
        "val Dice": f"{report.val_dice:.4f}{' *' if report.is_best else ''}",
        "val IoU": f"{report.val_iou:.4f}",
        "best Dice": f"{report.best_dice:.4f}",
        "lr": f"{report.lr:.2e}",
        "img/s": f"{report.images_per_s:.1f}",
        "time": f"{report.seconds:.1f}s",
    }
