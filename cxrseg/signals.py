"""Stopping on SIGTERM as on Ctrl-C, and worker processes that never outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_SECONDS = 1.0  # how often a worker without prctl checks that its parent is still there


@contextlib.contextmanager
def sigterm_raises(error: Callable[[], BaseException]) -> Iterator[dict[str, int]]:
    """While inside, SIGTERM raises error() in the main thread, so the clean-up written for Ctrl-C (finally
    blocks, `except BaseException`) runs for it too; the yielded dict's "signal" is then SIGTERM's number.

    Only the first SIGTERM raises: later ones, while that clean-up runs, are ignored. Should the error be
    swallowed (a library that catches Exception around an import, as torch's profiler does), it is raised again
    when the body ends. A process forked inside
    (a worker) that still has this handler dies of SIGTERM as by default. Outside the main thread, nothing is
    installed (Python runs handlers there only).
    """
    stop = {"signal": 0}
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked worker that kept the handler: what SIGTERM does by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not stop["signal"]:
            stop["signal"] = signum
            raise error()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stop["signal"]:  # the body ended normally: code that catches Exception broadly swallowed the error
        raise error()


def die_with_parent(parent: int) -> None:
    """Make this (worker) process end as soon as `parent`, its parent, ends, however it ends (SIGTERM, SIGKILL,
    a crash): Linux's PR_SET_PDEATHSIG where available, else a thread that watches os.getppid().

    A worker blocked on a queue whose other end it inherited itself never sees the queue close, so without
    this it would wait forever, holding the pipes (a wrapper's stdout, stderr) its parent gave it.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            done = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            done = False
        if done:
            if os.getppid() != parent:  # the parent ended before the call: no signal will come
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="cxrseg-watch-parent", daemon=True).start()
