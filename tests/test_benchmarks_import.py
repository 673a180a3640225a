"""The benchmark scripts still import: a refactor that moves a cxrseg name breaks them outside the suite."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
OPTIONAL = {"check_hd95_monai": "monai"}  # development tools, not dependencies


@pytest.mark.slow  # imports torch-heavy scripts
@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_benchmark_script_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [name])
    module = importlib.import_module(name)
    assert module.__file__ and Path(module.__file__).parent == BENCHMARKS
