"""`cxrseg download`: a thin command over cxrseg.download.download_dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from cxrseg.cli.common import console, flag_settings


def download(
    ctx: typer.Context,
    dest: Annotated[
        Path | None, typer.Option(help="Target folder (default: settings data.root, train's --data).")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Fetch this http(s) .zip or .tar.gz instead of Kaggle.")] = None,
    archive: Annotated[
        Path | None, typer.Option(help="Use a .zip/.tar.gz already downloaded (left untouched).")
    ] = None,
    sha256: Annotated[str | None, typer.Option(help="Expected SHA-256 of the archive.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a dataset already there.")] = False,
) -> None:
    """Fetch the Kaggle dataset newra008/chest-segmentation-image (or --url / --archive) safely and resumably."""
    from cxrseg.download import download_dataset

    if url and archive:
        raise typer.BadParameter("give either --url or --archive, not both", param_hint="--url/--archive")
    settings = flag_settings(ctx, {"data": {"root": dest}})
    columns = (
        TextColumn("[bold]download"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("download", total=None)

        def on_progress(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        result = download_dataset(
            settings.download,
            settings.data.root[0],
            url=url,
            archive=archive,
            sha256=sha256,
            force=force,
            on_progress=on_progress,
            env=os.environ,
        )
    if result.already_present:
        console.print(f"Dataset already present in {result.dest}; use --force to replace it.")
    else:
        console.print(f"[green]Dataset ready[/green] in {result.dest} (from {result.source}).")
    table = Table("folder", "files")
    for folder, count in result.counts.items():
        table.add_row(folder, str(count))
    console.print(table)
