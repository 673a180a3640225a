"""Predict lung masks for files, folders or globs: threaded decoding, batched inference, a writer thread, one CSV."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cxrseg import assets
from cxrseg.config import InferenceSettings
from cxrseg.dataset import IMAGE_DIR, TEST_IMAGE_DIR
from cxrseg.dicom import read_xray
from cxrseg.errors import CxrsegError, DataError
from cxrseg.files import output_error
from cxrseg.imaging import MAX_PIXELS
from cxrseg.inference.backend import load_model, place
from cxrseg.inference.engine import forward_probabilities, probabilities_to_masks
from cxrseg.inference.quality import (
    border_confidence,
    columns,
    empty_row,
    measure,
    midline_contrast,
    printable,
    read_rows,
    write_rows,
)
from cxrseg.inference.render import overlay, save_png, to_uint8
from cxrseg.inference.shard import Shard, select, write_manifest
from cxrseg.inputs import Job, Plan, check_output, plan_inputs
from cxrseg.memory import available_bytes, fit_batch_size
from cxrseg.preprocess import Geometry, fit_to_square, valid_region

MASK, OVERLAY, PROBABILITY = ".mask.png", ".overlay.png", ".prob.png"
OVERLAY_MAX_SIDE = 1024  # overlays of larger X-rays are downscaled: enough to check a mask, 10x cheaper


@dataclass
class PredictOptions:
    """How predict_paths finds inputs and what it writes; `InferenceSettings` holds the model knobs."""

    recursive: bool = False
    overlay: bool = True
    probabilities: bool = False
    skip_existing: bool = False
    write_json: bool = False
    max_pixels: int = MAX_PIXELS
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))  # decoding and writing threads
    prefetch: int = 2  # batches decoded ahead of the model
    write_queue: int = 2  # batches waiting for the writer thread
    save_every: float = 10.0  # seconds between checkpoints of predictions.csv during a run
    shard: Shard = field(default_factory=Shard)  # this process's share of the inputs (see cxrseg.inference.shard)


@dataclass
class PredictResult:
    rows: list[dict[str, Any]]
    csv_path: Path
    json_path: Path | None
    ignored: list[Path] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(row["status"] != "ok" for row in self.rows)

    @property
    def images_per_s(self) -> float:
        return (len(self.rows) - self.skipped) / self.seconds if self.seconds > 0 else 0.0


def sample_inputs() -> list[Path]:
    """The X-rays shipped with cxrseg: assets/sample/image/ and assets/sample/test_image/."""
    root = assets.SAMPLE_DIR
    folders = [root / name for name in (IMAGE_DIR, TEST_IMAGE_DIR) if (root / name).is_dir()]
    if not folders:
        raise DataError(f"No sample X-rays in this installation ({root}); pass INPUT files or folders instead.")
    return folders


@dataclass
class _Decoded:
    """One input ready for the model, plus what the writer needs from the original file."""

    fitted: np.ndarray  # (S, S) float32, zero padding
    geometry: Geometry
    display: np.ndarray | None  # uint8 grey, long side <= OVERLAY_MAX_SIDE; only when overlays are asked for
    midline: float
    spacing: tuple[float, float] | None
    spacing_source: str


def _display(gray: np.ndarray) -> np.ndarray:
    scale = OVERLAY_MAX_SIDE / max(gray.shape)
    if scale < 1:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = np.asarray(Image.fromarray(gray.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))
    return to_uint8(gray)


def _decode(job: Job, size: int, options: PredictOptions) -> _Decoded | str:
    """Read and fit one input (runs in a decoding thread); a string is the error message."""
    try:
        xray = read_xray(job.source, options.max_pixels)
        fitted, geometry = fit_to_square(xray.gray, size)
        step = max(1, max(xray.gray.shape) // 512)  # the contrast needs no more than ~512 px
        display = _display(xray.gray) if options.overlay else None
        midline = midline_contrast(xray.gray[::step, ::step])
        return _Decoded(fitted, geometry, display, midline, xray.spacing, xray.spacing_source)
    except CxrsegError as exc:
        return str(exc)
    except Exception as exc:  # one odd file must not end a 10,000-image run
        return f"{job.source}: unexpected {type(exc).__name__} while reading ({exc}); check or remove this file."


def _error_row(job: Job, message: str) -> dict[str, Any]:
    return empty_row() | {"input": str(job.source), "status": "error", "message": message}


def _write_one(job: Job, item: _Decoded | str, model_prob: torch.Tensor | None, out_dir: Path, cfg, options):
    """Mask, pictures and CSV row of one input (runs in a writing thread); errors become error rows."""
    if isinstance(item, str):
        return _error_row(job, item)
    try:
        [(prob, mask)] = probabilities_to_masks(model_prob, [item.geometry], cfg)
        border = border_confidence(model_prob[0, 0].numpy(), valid_region(item.geometry), cfg.threshold)
        measures = measure(mask, prob, cfg.threshold, border, item.midline)
        save_png(Image.fromarray(mask.astype(np.uint8) * 255), out_dir / (job.name + MASK))
        if item.display is not None:
            small = mask
            if item.display.shape != mask.shape:
                small = np.asarray(Image.fromarray(mask).resize(item.display.shape[::-1], Image.Resampling.NEAREST))
            save_png(overlay(item.display, small), out_dir / (job.name + OVERLAY))
        if options.probabilities:
            save_png(Image.fromarray(np.rint(prob * 255).astype(np.uint8)), out_dir / (job.name + PROBABILITY))
    except Exception as exc:  # e.g. a full disk: this input failed, the run goes on
        return _error_row(job, f"{job.source}: outputs not written ({type(exc).__name__}: {exc}).")
    return {
        "input": str(job.source),
        "status": "ok",
        "message": "",
        "mask": job.name + MASK,
        "overlay": job.name + OVERLAY if item.display is not None else "",
        "spacing_source": item.spacing_source,
        **columns(measures, item.spacing),
    }


class _Writer(threading.Thread):
    """Takes (indices, jobs, decoded, probabilities) batches from a bounded queue; writes in a thread pool."""

    def __init__(self, out_dir: Path, cfg: InferenceSettings, options: PredictOptions, rows: list, save) -> None:
        super().__init__(name="cxrseg-writer", daemon=True)
        self.out_dir, self.cfg, self.options, self.rows, self.save = out_dir, cfg, options, rows, save
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, options.write_queue))
        self.failure: BaseException | None = None
        self.completed = 0  # inputs whose outputs and row are written (read by the main thread)

    def put(self, item: Any) -> None:
        while self.failure is None and self.is_alive():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise RuntimeError("the prediction writer thread stopped") from self.failure

    def finish(self) -> None:
        self.put(None)
        self.join()
        if self.failure is not None:
            raise self.failure

    def run(self) -> None:
        last_save = time.monotonic()
        try:
            with ThreadPoolExecutor(max(1, self.options.workers), thread_name_prefix="cxrseg-write") as pool:
                while (batch := self.queue.get()) is not None:
                    indices, jobs, decoded, probs = batch
                    maps = iter(probs.split(1) if probs is not None else ())
                    args = [
                        (job, item, None if isinstance(item, str) else next(maps))
                        for job, item in zip(jobs, decoded, strict=True)
                    ]
                    futures = [pool.submit(_write_one, *a, self.out_dir, self.cfg, self.options) for a in args]
                    for index, future in zip(indices, futures, strict=True):
                        self.rows[index] = future.result()
                    self.completed += len(indices)
                    if time.monotonic() - last_save > self.options.save_every:
                        self.save()  # a killed run leaves a predictions.csv that --skip-existing can resume from
                        last_save = time.monotonic()
        except BaseException as exc:  # handed to the main thread by put() and finish()
            self.failure = exc


def _is_done(job: Job, out_dir: Path, previous: dict[str, dict], options: PredictOptions) -> bool:
    """Resume rule: every output this run asks for exists and the previous CSV holds an ok row for the mask."""
    row = previous.get(printable(job.name + MASK))
    wanted = [MASK] + [OVERLAY] * options.overlay + [PROBABILITY] * options.probabilities
    return row is not None and row["status"] == "ok" and all((out_dir / (job.name + s)).is_file() for s in wanted)


def predict_paths(
    inputs: Sequence[str | Path],
    out_dir: Path,
    checkpoint: Path,
    cfg: InferenceSettings | None = None,
    options: PredictOptions | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_advance: Callable[[int, float], None] | None = None,
) -> PredictResult:
    """Segment every X-ray in `inputs` (files, folders, globs) into `out_dir`, mirroring the input tree.

    Writes <name>.mask.png (0/255, original size), <name>.overlay.png, optional <name>.prob.png and
    predictions.csv: a row per input, failed ones included. Callbacks, called from this thread:
    on_start(inputs, inputs kept from a previous run), on_advance(inputs done, images per second).
    With `options.shard` K/N, only that shard's inputs are done, into predictions.K-of-N.csv, and a manifest
    written last marks the shard complete for merge_shards.
    """
    cfg, options = cfg or InferenceSettings(), options or PredictOptions()
    plan: Plan = plan_inputs(inputs, options.recursive)
    check_output(out_dir, plan, options.recursive)
    chosen = select([job.name or str(job.source) for job in plan.jobs], options.shard)
    jobs = [plan.jobs[i] for i in chosen]
    model, info = load_model(checkpoint, cfg, len(jobs))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only, or a file where a folder should be (--out afile/sub)
        raise output_error(out_dir, exc) from exc
    csv_path = out_dir / options.shard.csv_name()
    previous = read_rows(csv_path) if options.skip_existing else {}
    rows: list[dict[str, Any] | None] = [None] * len(jobs)
    todo = []
    for index, job in enumerate(jobs):
        if job.error:
            rows[index] = _error_row(job, job.error)
        elif options.skip_existing and _is_done(job, out_dir, previous, options):
            rows[index] = previous[printable(job.name + MASK)] | {"input": str(job.source)}
        else:
            todo.append(index)
    skipped = len(jobs) - len(todo) - sum(bool(job.error) for job in jobs)
    if on_start:
        on_start(len(jobs), len(jobs) - len(todo))

    def save() -> None:
        write_rows([row for row in rows if row is not None], csv_path)

    start = time.perf_counter()
    writer = _Writer(out_dir, cfg, options, rows, save)
    writer.start()
    report = _Reporter(on_advance, start)
    try:
        _infer(model, info.settings, jobs, todo, cfg, options, writer, report)
        writer.finish()
        report(writer.completed)
    except BaseException:  # Ctrl-C or a failure: finish the queued batches and keep their rows for a resume
        with contextlib.suppress(Exception):
            writer.finish()
        with contextlib.suppress(Exception):
            save()
        raise
    seconds = time.perf_counter() - start
    final = [row for row in rows if row is not None]
    assert len(final) == len(jobs), "every input gets a row"
    write_rows(final, csv_path)
    json_path = write_rows(final, csv_path.with_suffix(".json"), as_json=True) if options.write_json else None
    if options.shard.enabled:
        write_manifest(out_dir, options.shard, chosen, len(plan.jobs))
    return PredictResult(final, csv_path, json_path, plan.ignored, skipped, seconds)


class _Reporter:
    """Calls on_advance(new inputs done, images/s) with the writer's count, from the calling thread."""

    def __init__(self, on_advance: Callable[[int, float], None] | None, start: float) -> None:
        self.on_advance, self.start, self.reported = on_advance, start, 0

    def __call__(self, completed: int) -> None:
        if self.on_advance and completed > self.reported:
            self.on_advance(completed - self.reported, completed / max(time.perf_counter() - self.start, 1e-9))
        self.reported = completed


def _infer(model, settings, jobs: list[Job], todo: list[int], cfg, options, writer: _Writer, report) -> None:
    """Decode `prefetch` batches ahead in a thread pool, run the model here, queue the outputs to the writer."""
    placed = place(model, settings, cfg)
    size, ahead = settings.preprocess.image_size, max(1, options.prefetch)
    step, _ = fit_batch_size(
        settings, cfg.batch_size, available_bytes(placed.device)
    )  # refuses a model too big for one
    batches = [todo[i : i + step] for i in range(0, len(todo), step)]
    with ThreadPoolExecutor(max(1, options.workers), thread_name_prefix="cxrseg-decode") as pool:
        pending: deque[list[Future]] = deque()
        try:
            for number, batch in enumerate(batches):
                for later in batches[number + len(pending) : number + ahead + 1]:
                    pending.append([pool.submit(_decode, jobs[i], size, options) for i in later])
                decoded = [future.result() for future in pending.popleft()]
                good = [item for item in decoded if not isinstance(item, str)]
                probs = None
                if good:  # (N, 1, S, S) fitted images and their non-padding regions
                    images = torch.from_numpy(np.stack([item.fitted for item in good]))[:, None]
                    valid = torch.from_numpy(np.stack([valid_region(item.geometry) for item in good]))[:, None]
                    probs = forward_probabilities(placed.model, images, valid, placed.device, placed.dtype, tta=cfg.tta)
                writer.put((batch, [jobs[i] for i in batch], decoded, probs))
                report(writer.completed)
        finally:
            for futures in pending:
                for future in futures:
                    future.cancel()
