"""cxrseg: lung-field segmentation of chest X-rays with a U-Net."""

import os

__version__ = "0.1.0"


def quiet_idle_threads() -> None:
    """Let idle OpenMP threads sleep rather than spin (OMP_WAIT_POLICY=PASSIVE), unless the user set a policy.

    On a CPU shared with worker processes (predict, evaluate), a spinning thread holds a core the workers need:
    on 2 cores predict ran ~10 % faster end to end and training no slower (benchmarks/RESULTS.md). It only
    takes effect before torch is first imported, so the command line calls it first thing.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
