"""The `cxrseg` app: the root options, the commands registered in one place, and typed errors as one red line."""

from __future__ import annotations

import inspect
import sys
from typing import Annotated

import typer
from rich.markup import escape

from cxrseg import __version__
from cxrseg.cli.common import DEBUG_ENV, ConfigOption, RootOptions, console, debug, stdout
from cxrseg.cli.download import download
from cxrseg.cli.evaluate import evaluate
from cxrseg.cli.export import export
from cxrseg.cli.options import Command, Group, option
from cxrseg.cli.predict import predict
from cxrseg.cli.train import train
from cxrseg.errors import CxrsegError, Interrupted

app = typer.Typer(
    cls=Group,
    help="Lung-field segmentation of chest X-rays with a U-Net.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"cxrseg {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: ConfigOption = None,
    show_debug: Annotated[
        bool, option("--debug", help="Show tracebacks on errors (or CXRSEG_DEBUG=1).", default=False, flag=True)
    ] = False,
    version: Annotated[
        bool,
        option(
            "--version",
            help="Print the cxrseg version and exit.",
            default=False,
            flag=True,
            callback=_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Settings come from flags, CXRSEG_* environment variables, a --config file, then defaults.

    --config may be given before or after the command.
    """
    debug["on"] = DEBUG_ENV or show_debug
    ctx.obj = RootOptions(config=config)


# in the order people use them; help is literal text, never rich markup
for command in (download, train, evaluate, predict, export):
    app.command(cls=Command, help=escape(inspect.getdoc(command) or ""))(command)


def main() -> None:
    """Console entry point: typed errors become one red line and their exit code (1, or 2 for usage errors)."""
    try:
        app()
    except Interrupted as exc:  # Ctrl-C or SIGTERM in a command (see Group.invoke): what was kept, if anything
        if debug["on"]:
            raise
        console.print(f"[red]Interrupted.[/red] {escape(str(exc))}".rstrip(), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except CxrsegError as exc:
        if debug["on"]:
            raise
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:  # outside a command (typer turns one inside into exit code 130 before us)
        console.print("[red]Interrupted.[/red]")
        sys.exit(130)
