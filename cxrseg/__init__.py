"""cxrseg: lung-field segmentation of chest X-rays with a U-Net."""

import ctypes
import os
import platform
import sys

__version__ = "0.1.0"

KEEP_FREED_BYTES = 1 << 30  # allocations below this reuse freed heap memory instead of fresh zeroed pages


def tune_cpu_runtime() -> None:
    """Process-wide CPU settings the command line makes first thing, before torch is imported.

    - Idle OpenMP threads sleep rather than spin (OMP_WAIT_POLICY=PASSIVE, unless the user set a policy): a spinning
      thread holds a core that predict's and evaluate's worker processes need.
    - On glibc, freed memory is kept for reuse (see keep_freed_memory).
    Figures in benchmarks/RESULTS.md. Python users get the command line's speed by calling this first.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """Let glibc reuse freed blocks below KEEP_FREED_BYTES rather than map and zero fresh pages each time.

    By default glibc serves each block over 32 MB (a batch of U-Net activations) with its own mmap and returns it
    on free, so every forward pass page-faults its activations in again: on a 2-core CPU a third of inference
    time went to the kernel. Returns whether the setting was made: not on other C libraries, nor when the user
    tunes malloc already (GLIBC_TUNABLES with glibc.malloc, or MALLOC_MMAP_THRESHOLD_).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, KEEP_FREED_BYTES) and mallopt(m_trim_threshold, KEEP_FREED_BYTES))
