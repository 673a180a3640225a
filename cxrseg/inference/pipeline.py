"""Ordered batches through the engine: decoding in DataLoader worker processes, the forward pass here, and the
per-image work after the model (restore, clean, measure, draw, write) in a pool of worker processes."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrseg.errors import WorkerError
from cxrseg.inference.engine import Engine, Fitted
from cxrseg.signals import die_with_parent

T = TypeVar("T")
R = TypeVar("R")


class Decoded(Protocol):
    fitted: Fitted


# decode(item) -> a Decoded, or a one-line error message; finish(item, decoded or message, (S, S) map or None)
Decode = Callable[[Any], Any]
Finish = Callable[[Any, Any, np.ndarray | None], R]


class _Inputs(Dataset):
    def __init__(self, items: Sequence[Any], decode: Decode) -> None:
        self.items, self.decode = items, decode

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.decode(self.items[index])


def _start_worker(parent: int) -> None:
    """Pool workers: one thread each (the processes are the parallelism); Ctrl-C and SIGTERM are the main
    process's, which finishes their running tasks and records them (a SIGTERM sent to the whole process group
    by `timeout` or a scheduler must not kill a worker mid-task); they end with `parent`, however it ends."""
    die_with_parent(parent)
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _start_decoder(worker_id: int, parent: int) -> None:
    """DataLoader workers: they end with `parent`; SIGTERM ends them (not a handler inherited by fork)."""
    die_with_parent(parent)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


class _Inline:
    """The pool's interface, run in this process: for workers=0 (small runs, tests, debugging)."""

    def submit(self, fn: Callable[..., R], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None: ...


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def run_pipeline(
    engine: Engine,
    items: Sequence[T],
    decode: Decode,
    finish: Finish,
    workers: int,
    prefetch: int = 2,
    on_late: Callable[[int, R], None] | None = None,
) -> Iterator[R]:
    """Yield finish(item, decoded, probability map) for every item, in the order of `items`.

    `decode` runs in `workers` DataLoader processes, up to `prefetch` batches each ahead of the model; `finish`
    in a pool of `workers` processes, with at most a few batches waiting, so memory does not grow with the
    number of items. With workers=0 everything runs in this process. decode and finish must be picklable
    (module-level functions or functools.partial of them) and must turn per-item failures into results.

    When the loop stops early (Ctrl-C, SIGTERM, an error, the generator closed), the tasks the pool had
    started are finished, the others dropped, and on_late(index in `items`, result) is called for each
    finished one that was not yielded, so its work (files already written) can still be recorded. Every worker
    process has ended when this returns; they also end if this process is killed.
    """
    batch_size = engine.cfg.batch_size
    parent = os.getpid()
    loader = DataLoader(
        _Inputs(items, decode),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_as_list,
        prefetch_factor=max(1, prefetch) if workers else None,
        multiprocessing_context=_context() if workers else None,
        worker_init_fn=partial(_start_decoder, parent=parent) if workers else None,
    )
    pending: deque[tuple[int, Future]] = deque()
    pool: ProcessPoolExecutor | _Inline = _Inline()
    batches: Any = None
    limit, submitted = batch_size * (2 + workers), 0
    try:
        if workers:
            pool = ProcessPoolExecutor(workers, _context(), initializer=_start_worker, initargs=(parent,))
        # the pool forks its processes on the first task: start them now, while this process holds no freed
        # batches in its heap, or they would inherit it and pay a copy-on-write fault for each page they reuse
        pool.submit(int).result()
        batches = iter(loader)
        for batch, chunk in zip(batches, _chunks(items, batch_size), strict=True):
            good = [decoded for decoded in batch if not isinstance(decoded, str)]
            maps = iter(engine.probabilities([d.fitted for d in good])[:, 0].numpy() if good else ())
            for item, decoded in zip(chunk, batch, strict=True):
                prob = None if isinstance(decoded, str) else next(maps)
                pending.append((submitted, pool.submit(finish, item, decoded, prob)))
                submitted += 1
            while pending and (len(pending) > limit or pending[0][1].done()):
                yield pending.popleft()[1].result()
        while pending:
            yield pending.popleft()[1].result()
    except BrokenProcessPool as exc:
        raise WorkerError(
            "a writing process ended abruptly (out of memory, or killed); run again with fewer --workers or a "
            "smaller --batch-size (predict keeps the rows done: add --skip-existing)"
        ) from exc
    finally:
        _stop(pool, batches, pending, on_late)


def _stop(pool: Any, batches: Any, pending: deque[tuple[int, Future]], on_late: Callable | None) -> None:
    """End the decoding processes and the pool (its running tasks finish), then hand on what finished late.

    torch's SIGCHLD handler raises when a decoding process dies; a SIGTERM sent to the whole process group kills
    them while this runs, and that error, raised in the middle, lost the rows of images already written. It is
    silenced for the clean-up (the processes are being ended anyway) and put back after."""
    held = _hold_sigchld()
    try:
        for _, future in pending:
            future.cancel()
        shutdown = getattr(batches, "_shutdown_workers", None)  # the DataLoader's own clean-up, now, not at exit
        if shutdown is not None:
            shutdown()
        _kill_if_broken(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        for index, future in pending:
            if on_late is not None and future.done() and not future.cancelled() and future.exception() is None:
                on_late(index, future.result())
    finally:
        if held is not None:
            signal.signal(signal.SIGCHLD, held)


def _kill_if_broken(pool: Any) -> None:
    """A pool whose worker died (the OOM killer, a SIGKILL) ends the others with SIGTERM, which they ignore (see
    _start_worker), and waits for them: one blocked on a queue lock the dead worker held would be waited on
    forever. Kill them instead; a broken pool's tasks are lost anyway."""
    if getattr(pool, "_broken", False):
        processes = getattr(pool, "_processes", None) or {}
        for process in list(processes.values()):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                process.kill()


def _hold_sigchld() -> Any:
    """Replace the SIGCHLD handler by the default (main thread, where it exists); returns the previous one."""
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGCHLD)
    if previous is None:  # set outside Python: left as it is
        return None
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return previous


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
