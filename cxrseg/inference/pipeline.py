"""Ordered batches through the engine: decoding in DataLoader worker processes, the forward pass here, and the
per-image work after the model (restore, clean, measure, draw, write) in a pool of worker processes."""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrseg.inference.engine import Engine, Fitted

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


def _start_worker() -> None:
    """Pool workers: one thread each (the processes are the parallelism); Ctrl-C is the main process's."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
    engine: Engine, items: Sequence[T], decode: Decode, finish: Finish, workers: int, prefetch: int = 2
) -> Iterator[R]:
    """Yield finish(item, decoded, probability map) for every item, in the order of `items`.

    `decode` runs in `workers` DataLoader processes, up to `prefetch` batches each ahead of the model; `finish`
    in a pool of `workers` processes, with at most a few batches waiting, so memory does not grow with the
    number of items. With workers=0 everything runs in this process. decode and finish must be picklable
    (module-level functions or functools.partial of them) and must turn per-item failures into results.
    """
    batch_size = engine.cfg.batch_size
    loader = DataLoader(
        _Inputs(items, decode),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_as_list,
        prefetch_factor=max(1, prefetch) if workers else None,
        multiprocessing_context=_context() if workers else None,
    )
    pool = ProcessPoolExecutor(workers, _context(), initializer=_start_worker) if workers else _Inline()
    # the pool forks its processes on the first task: start them now, while this process holds no freed batches
    # in its heap, or they would inherit it and pay a copy-on-write fault for each page they reuse
    pool.submit(int).result()
    pending: deque[Future] = deque()
    limit = batch_size * (2 + workers)
    try:
        for batch, chunk in zip(loader, _chunks(items, batch_size), strict=True):
            good = [decoded for decoded in batch if not isinstance(decoded, str)]
            maps = iter(engine.probabilities([d.fitted for d in good])[:, 0].numpy() if good else ())
            for item, decoded in zip(chunk, batch, strict=True):
                prob = None if isinstance(decoded, str) else next(maps)
                pending.append(pool.submit(finish, item, decoded, prob))
            while pending and (len(pending) > limit or pending[0].done()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
