"""The `cxrseg` command line: app.py assembles it from one module per command."""

from __future__ import annotations


def main() -> None:
    """Console entry point (`cxrseg`, `python -m cxrseg`); imports the app only when run."""
    from cxrseg import quiet_idle_threads

    quiet_idle_threads()  # before anything imports torch
    from cxrseg.cli.app import main as run

    run()
