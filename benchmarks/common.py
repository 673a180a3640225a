"""Helpers shared by the benchmark scripts: the machine's matmul ceiling, streamed rows, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

import cxrseg
from cxrseg.device import cpu_has_bf16


def row(name: str, value: str, note: str = "") -> None:
    """Print one table row at once, so a long benchmark shows figures as they come."""
    print(f"{name:<20} {value:>14}  {note}", flush=True)


def header(device: torch.device, extra: str = "") -> None:
    """What ran where: versions, threads, native bf16 and the load average (other jobs add noise)."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"cxrseg {cxrseg.__version__}, torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
        f"native bf16: {cpu_has_bf16()}, load average {load}{extra}",
        flush=True,
    )
    row("figure", "value", "details")
    print("-" * 100, flush=True)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def target_row(name: str, fmt: str, best: float, median: float, what: str, ok: bool) -> None:
    """A figure from the fastest repeats, its median-based twin, and whether it meets its target."""
    row(name, fmt.format(best), f"median {fmt.format(median)}; {what}: {verdict(ok)}")


def matmul_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0, min_repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matrix product (2 n^3 FLOPs), repeated for `seconds` after a warm-up.

    Other jobs only ever slow a repeat down, so the fastest one is the closest to the machine's ceiling.
    """
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)
    best, repeats, started = float("inf"), 0, time.perf_counter()
    while repeats < min_repeats or time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        torch.mm(a, b, out=out)
        best, repeats = min(best, time.perf_counter() - begin), repeats + 1
    return 2 * n**3 / best / 1e9


def measure_ceilings(previous: dict[str, float] | None = None) -> dict[str, float]:
    """bf16 and fp32 matmul GFLOP/s, one row each; with `previous`, the better of this and that pass."""
    ceilings = {}
    for name, dtype in [("bf16", torch.bfloat16), ("fp32", torch.float32)]:
        ceilings[name] = max(matmul_gflops(dtype), (previous or {}).get(name, 0.0))
        how = "best of both passes" if previous else "best over 3 s of repeats"
        row(f"ceiling {name}", f"{ceilings[name]:.1f}", f"GFLOP/s, torch.mm 2048x2048, {how}")
    return ceilings


def cpu_model() -> str:
    """The CPU's model name, for the header of every figure (these machines change between sessions)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_json(figures: dict, path: Path) -> None:
    """Write to a temporary name and rename, so a killed run never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(figures, indent=2))
    os.replace(tmp, path)
    print(f"figures written to {path}", flush=True)
