"""The `cxrseg` command line: app.py assembles it from one module per command."""

from __future__ import annotations


def main() -> None:
    """Console entry point (`cxrseg`, `python -m cxrseg`); imports the app only when run."""
    from cxrseg import tune_cpu_runtime

    tune_cpu_runtime()  # before anything imports torch
    from cxrseg.cli.app import main as run

    run()
