"""The `cxrseg` app: the root options, the commands registered in one place, and typed errors as one red line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from cxrseg import __version__
from cxrseg.cli.common import console, stdout
from cxrseg.cli.download import download
from cxrseg.cli.evaluate import evaluate
from cxrseg.cli.export import export
from cxrseg.cli.predict import predict
from cxrseg.cli.train import train
from cxrseg.config import load_settings
from cxrseg.errors import CxrsegError

app = typer.Typer(
    help="Lung-field segmentation of chest X-rays with a U-Net.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_debug = {"on": os.environ.get("CXRSEG_DEBUG", "").lower() in ("1", "true", "yes")}


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


for command in (download, train, evaluate, predict, export):
    app.command()(command)


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
