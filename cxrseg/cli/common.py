"""What commands share: consoles, --config, settings with the typed flags, progress, the model choice."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cxrseg.cli.options import option
from cxrseg.config import Backend, Device, KeepBy, Settings
from cxrseg.config_sources import load_settings, with_overrides

# soft_wrap: a long path stays on one line (a terminal wraps it itself; a log file keeps it whole)
console = Console(stderr=True, soft_wrap=True)
stdout = Console(soft_wrap=True)
DEBUG_ENV = os.environ.get("CXRSEG_DEBUG", "").lower() in ("1", "true", "yes")
MAX_SHOWN = 10  # failures listed one per line; the rest are counted
debug = {"on": DEBUG_ENV}

ConfigOption = Annotated[
    Path | None,
    option("--config", help="TOML config file (flags > CXRSEG_* env > file > defaults).", default="none"),
]


@dataclass
class RootOptions:
    """What the root callback received, before the command's own flags."""

    config: Path | None = None


def flag_settings(ctx: typer.Context, overrides: dict[str, Any], config: Path | None = None) -> Settings:
    """Settings from defaults, the --config file (given before or after the command), env, then the typed flags.

    A flag left at None was not typed and changes nothing.
    """
    root = ctx.obj if isinstance(ctx.obj, RootOptions) else RootOptions()
    if config and root.config and config.resolve() != root.config.resolve():
        raise typer.BadParameter(f"given twice ({root.config} and {config}); give one file", param_hint="--config")
    settings = load_settings(config or root.config)
    debug["on"] = debug["on"] or settings.debug
    return with_overrides(settings, overrides)


def progress_bar() -> Progress:
    """The bar for a terminal; nothing at all in a log file (a final frame there is noise)."""
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
        disable=not console.is_terminal,
    )


def require_paths(paths: list[Path] | Path | None, flag: str, hint: str) -> None:
    """A path the user typed must exist before anything slow starts (exit code 2, a usage error)."""
    from cxrseg.errors import InputPathError

    for path in [paths] if isinstance(paths, Path) else paths or []:
        if not path.exists():
            raise InputPathError(f"{flag} {path}: no such file or folder; {hint}.")


def say(message: str) -> None:
    """One plain line on stderr: no markup, no highlighting, never wrapped into a file."""
    console.print(message, markup=False, highlight=False)


def chosen_checkpoint(checkpoint: Path | None, runs_dir: Path) -> Path:
    """The --checkpoint given, else the newest run's best, else the bundled model, saying which and why.

    When a run replaces the bundled model, both validation Dice figures are shown so the swap is visible.
    """
    from cxrseg.assets import BUNDLED_MODEL
    from cxrseg.checkpoint import checkpoint_metrics, default_checkpoint

    if checkpoint is not None:
        return checkpoint
    checkpoint, why = default_checkpoint(runs_dir)
    if checkpoint.resolve() == BUNDLED_MODEL.resolve():
        say(why)
        return checkpoint
    run_dice = _dice(checkpoint_metrics(checkpoint))
    bundled_dice = _dice(checkpoint_metrics(BUNDLED_MODEL))
    say(
        f"{why}: validation Dice {run_dice}, instead of the bundled model's {bundled_dice} "
        "(each on its own validation split, so different images); pass --checkpoint to choose."
    )
    return checkpoint


def _dice(metrics: dict[str, Any]) -> str:
    value = metrics.get("val_dice")
    return f"{value:.4f}" if isinstance(value, int | float) else "unknown"


# options shared by evaluate and predict
CheckpointOption = Annotated[
    Path | None,
    option(help="Checkpoint (.safetensors or .onnx).", default="the newest run's best, else the bundled model"),
]
RunsDirOption = Annotated[
    Path | None, option(help="Where to look for the newest run's checkpoint.", setting="train.runs_dir")
]
TtaOption = Annotated[
    bool | None,
    option("--tta/--no-tta", help="Average with a flipped prediction.", setting="inference.tta", flag=True),
]
TrimOption = Annotated[
    bool | None,
    option(
        "--trim-border/--no-trim-border",
        help="Crop margins of one grey (a canvas, a figure's frame, black padding) off each X-ray before the model.",
        default="as the checkpoint was trained",
        flag=True,
    ),
]
PostprocessOption = Annotated[
    bool | None,
    option(
        "--postprocess/--no-postprocess",
        help="Keep 2 parts (the largest; see inference.keep_by), fill holes, drop specks.",
        setting="inference.postprocess",
        flag=True,
    ),
]
BatchSizeOption = Annotated[int | None, option(help="Images per forward pass.", setting="inference.batch_size", min=1)]
DeviceOption = Annotated[Device | None, option(help="Where the model runs.", setting="inference.device")]
KeepByOption = Annotated[
    KeepBy | None,
    option(
        help="Which 2 parts the clean-up keeps: the largest (area), or those with most pixels of probability "
        ">= 0.9 (confident_area: a large faint ghost beside the chest loses to a lung).",
        setting="inference.keep_by",
    ),
]
BackendOption = Annotated[
    Backend | None,
    option(help="torch, onnxruntime (CPU), or auto (see README: Deploy).", setting="inference.backend"),
]


def print_failures(messages: list[str], rest: str) -> None:
    """The first MAX_SHOWN failure messages one per line on stderr, then how many more (`rest` says what and
    where to find them)."""
    for message in messages[:MAX_SHOWN]:
        console.print(f"[red]failed:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    if len(messages) > MAX_SHOWN:
        console.print(f"[red]... and {len(messages) - MAX_SHOWN} more {rest}")
