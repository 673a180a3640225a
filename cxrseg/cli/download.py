"""`cxrseg download`: a thin command over cxrseg.download.download_dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from cxrseg.cli.common import ConfigOption, console, flag_settings, require_paths, say
from cxrseg.cli.options import option


def download(
    ctx: typer.Context,
    dest: Annotated[
        Path | None, option(help="Target folder, where train's --data looks by default.", setting="data.root")
    ] = None,
    url: Annotated[
        str | None, option(help="Fetch this http(s) .zip or .tar.gz instead of Kaggle.", default="Kaggle")
    ] = None,
    archive: Annotated[
        Path | None, option(help="Use a .zip/.tar.gz already downloaded (left untouched).", default="none")
    ] = None,
    sha256: Annotated[str | None, option(help="Expected SHA-256 of the archive.", default="not checked")] = None,
    force: Annotated[
        bool, option("--force", help="Replace a dataset already there.", default=False, flag=True)
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Fetch the Kaggle dataset newra008/chest-segmentation-image (or --url / --archive) safely and resumably."""
    from cxrseg.download import download_dataset

    if url and archive:
        raise typer.BadParameter("give either --url or --archive, not both", param_hint="--url/--archive")
    require_paths(archive, "--archive", "pass the .zip or .tar.gz file you downloaded")
    settings = flag_settings(ctx, {"data": {"root": dest}}, config)
    columns = (
        TextColumn("[bold]download"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
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
        say(f"Dataset already present in {result.dest}; use --force to replace it.")
    else:
        say(f"Dataset ready in {result.dest} (from {result.source}).")
    table = Table("folder", "files")
    for folder, count in result.counts.items():
        table.add_row(folder, str(count))
    console.print(table)
