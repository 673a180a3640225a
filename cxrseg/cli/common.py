"""What every command shares: the consoles, the progress bar, and settings merged with the typed flags."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cxrseg.config import Settings, with_overrides

console = Console(stderr=True)
stdout = Console()


def flag_settings(ctx: typer.Context, overrides: dict[str, Any]) -> Settings:
    """The Settings the root callback built, with the flags the user typed (None means not given) on top."""
    return with_overrides(ctx.obj, overrides)


def progress_bar() -> Progress:
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
