"""The `cxrseg` command line: app.py assembles it from one module per command."""

from __future__ import annotations


def main() -> None:
    """Console entry point (`cxrseg`, `python -m cxrseg`); imports the app only when run."""
    from cxrseg.cli.app import main as run

    run()
