"""Predict lung masks for files, folders or globs: decoding and writing in worker processes, one CSV."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrseg import assets
from cxrseg.config import InferenceSettings
from cxrseg.dataset import IMAGE_DIR, TEST_IMAGE_DIR
from cxrseg.dicom import read_xray
from cxrseg.errors import CxrsegError, DataError
from cxrseg.files import output_error
from cxrseg.imaging import MAX_PIXELS
from cxrseg.inference.engine import Fitted, finish, fit_image, load_engine
from cxrseg.inference.evaluate import default_workers
from cxrseg.inference.pipeline import run_pipeline
from cxrseg.inference.quality import border_confidence, columns, measure, midline_contrast
from cxrseg.inference.render import display_image, overlay, save_jpeg, save_png
from cxrseg.inference.shard import Shard, select, write_manifest
from cxrseg.inference.table import empty_row, printable, read_rows, write_rows
from cxrseg.inputs import Job, Plan, check_output, plan_inputs
from cxrseg.postprocess import lung_sides
from cxrseg.preprocess import valid_region

MASK, OVERLAY, PROBABILITY = ".mask.png", ".overlay.jpg", ".prob.png"
OVERLAY_MAX_SIDE = InferenceSettings().overlay_size  # the default display size of overlays


@dataclass
class PredictOptions:
    """How predict_paths finds inputs and what it writes; `InferenceSettings` holds the model knobs."""

    recursive: bool = False
    overlay: bool = True
    probabilities: bool = False
    skip_existing: bool = False
    write_json: bool = False
    max_pixels: int = MAX_PIXELS
    workers: int = field(default_factory=default_workers)  # decoding processes, and as many writing processes
    prefetch: int = 2  # batches each decoding process prepares ahead of the model
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

    fitted: Fitted
    display: np.ndarray | None  # uint8 grey, long side <= overlay_size; only when overlays are asked for
    midline: float
    spacing: tuple[float, float] | None
    spacing_source: str
    note: str = ""  # e.g. an unusable DICOM window read past: the ok row's message


def _decode(job: Job, size: int, options: PredictOptions, overlay_size: int, trim: bool = False) -> _Decoded | str:
    """Read and fit one input (in a decoding process); a string is the error message."""
    try:
        xray = read_xray(job.source, options.max_pixels)
        step = max(1, max(xray.gray.shape) // 512)  # the contrast needs no more than ~512 px
        display = display_image(xray.gray, overlay_size) if options.overlay else None
        midline = midline_contrast(xray.gray[::step, ::step])
        fitted = fit_image(xray.gray, size, trim)
        return _Decoded(fitted, display, midline, xray.spacing, xray.spacing_source, xray.note)
    except CxrsegError as exc:
        return str(exc)
    except Exception as exc:  # one odd file must not end a 10,000-image run
        return f"{job.source}: unexpected {type(exc).__name__} while reading ({exc}); check or remove this file."


def _error_row(job: Job, message: str) -> dict[str, Any]:
    return empty_row() | {"input": _recorded(job.source), "status": "error", "message": message}


def _write_outputs(
    job: Job, item: _Decoded, mask: np.ndarray, prob: np.ndarray, out_dir: Path, options, sides: np.ndarray
) -> None:
    save_png(Image.fromarray(mask.astype(np.uint8) * 255), out_dir / (job.name + MASK))
    if item.display is not None:
        if item.display.shape == mask.shape:
            picture = overlay(item.display, mask, sides=sides)
        else:  # a downscaled display copy: its own mask and labels
            small = np.asarray(Image.fromarray(mask).resize(item.display.shape[::-1], Image.Resampling.NEAREST))
            picture = overlay(item.display, small)
        save_jpeg(picture, out_dir / (job.name + OVERLAY))
    if options.probabilities:
        save_png(Image.fromarray(np.rint(prob * 255).astype(np.uint8)), out_dir / (job.name + PROBABILITY))


def _write_one(
    job: Job, item: _Decoded | str, model_prob: np.ndarray | None, out_dir: Path, cfg: InferenceSettings, options
) -> dict[str, Any]:
    """Mask, pictures and CSV row of one input (in a writing process); errors become error rows."""
    if isinstance(item, str):
        return _error_row(job, item)
    try:
        geometry = item.fitted.geometry
        prob, mask, raw_components = finish(model_prob, geometry, cfg)
        border = border_confidence(model_prob, valid_region(geometry), cfg.threshold)
        _, left, height, width = geometry.box  # the film the model saw: the whole image unless margins were cropped
        labelled = lung_sides(mask, left + (width - 1) / 2)  # once, for the lung areas and the overlay's colours
        measures = measure(mask, prob, cfg.threshold, border, item.midline, labelled, raw_components, height * width)
        _write_outputs(job, item, mask, prob, out_dir, options, labelled[0])
    except Exception as exc:  # e.g. a full disk: this input failed, the run goes on
        return _error_row(job, f"{job.source}: outputs not written ({type(exc).__name__}: {exc}).")
    return {
        "input": _recorded(job.source),
        "status": "ok",
        "message": item.note,
        "mask": job.name + MASK,
        "overlay": job.name + OVERLAY if item.display is not None else "",
        "spacing_source": item.spacing_source,
        **columns(measures, item.spacing),
    }


def _recorded(source: Path) -> str:
    """An input as its row names it: an absolute path (not resolved through links), so that a table read
    later, from another folder, still says which file each mask came from."""
    return str(source.absolute())


def _same_input(recorded: str, source: Path) -> bool:
    """Whether a previous row's `input` names this file (the same path, or another path to the same file)."""
    if recorded == printable(_recorded(source)):
        return True
    try:
        return os.path.samefile(recorded, source)
    except OSError:
        return False


def _is_done(job: Job, out_dir: Path, previous: dict[str, dict], options: PredictOptions) -> bool:
    """Resume rule: the previous CSV holds an ok row for the mask, made from this very input (not a namesake
    from another folder), every output this run asks for exists, and the input is not newer than its mask."""
    row = previous.get(printable(job.name + MASK))
    if row is None or row["status"] != "ok" or not _same_input(row["input"], job.source):
        return False
    wanted = [MASK] + [OVERLAY] * options.overlay + [PROBABILITY] * options.probabilities
    if not all((out_dir / (job.name + s)).is_file() for s in wanted):
        return False
    try:
        return job.source.stat().st_mtime_ns <= (out_dir / (job.name + MASK)).stat().st_mtime_ns
    except OSError:
        return False


def _kept_row(job: Job, out_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
    """A previous run's row of `job`, its paths rebuilt from the job, never taken from the table: an edited
    `mask` or `overlay` cell must not send the report (or anything else reading the row) outside --out."""
    had_overlay = bool(row.get("overlay")) and (out_dir / (job.name + OVERLAY)).is_file()
    paths = {"mask": job.name + MASK, "overlay": job.name + OVERLAY if had_overlay else ""}
    return row | {"input": _recorded(job.source)} | paths


def _triage(plan: Plan, out_dir: Path, csv_path: Path, options: PredictOptions) -> tuple[list, list[int], int]:
    """Rows known before the model runs (planning errors, inputs kept by --skip-existing), indices to do, kept."""
    previous = read_rows(csv_path) if options.skip_existing else {}
    rows: list[dict[str, Any] | None] = [None] * len(plan.jobs)
    todo, kept = [], 0
    for index, job in enumerate(plan.jobs):
        if job.error:
            rows[index] = _error_row(job, job.error)
        elif options.skip_existing and _is_done(job, out_dir, previous, options):
            rows[index], kept = _kept_row(job, out_dir, previous[printable(job.name + MASK)]), kept + 1
        else:
            todo.append(index)
    return rows, todo, kept


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

    Writes <name>.mask.png (0/255, original size), <name>.overlay.jpg (long side at most
    cfg.overlay_size), optional <name>.prob.png and predictions.csv: a row per input, failed ones included.
    Callbacks (this thread): on_start(inputs, inputs kept from a previous run), on_advance(done, images/s).
    With `options.shard` K/N, only that shard's inputs are done, into predictions.K-of-N.csv, and a manifest
    written last marks the shard complete for merge_shards.
    """
    cfg, options = cfg or InferenceSettings(), options or PredictOptions()
    everything: Plan = plan_inputs(inputs, options.recursive)
    check_output(out_dir, everything, options.recursive)
    chosen = select([job.name or str(job.source) for job in everything.jobs], options.shard)
    plan = dataclasses.replace(everything, jobs=[everything.jobs[i] for i in chosen])
    engine, _ = load_engine(checkpoint, cfg, len(plan.jobs))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only, or a file where a folder should be (--out afile/sub)
        raise output_error(out_dir, exc) from exc
    csv_path = out_dir / options.shard.csv_name()
    rows, todo, skipped = _triage(plan, out_dir, csv_path, options)
    if on_start:
        on_start(len(plan.jobs), len(plan.jobs) - len(todo))

    def save() -> None:
        write_rows([row for row in rows if row is not None], csv_path)

    decode = partial(_decode, size=engine.size, options=options, overlay_size=cfg.overlay_size, trim=engine.trim)
    write = partial(_write_one, out_dir=out_dir, cfg=cfg, options=options)

    def finished_late(index: int, row: dict[str, Any]) -> None:  # written while an interrupted run stopped
        rows[todo[index]] = row

    start = last_save = time.perf_counter()
    try:
        jobs = [plan.jobs[i] for i in todo]
        results = run_pipeline(engine, jobs, decode, write, options.workers, options.prefetch, finished_late)
        with contextlib.closing(results):
            for done, row in enumerate(results, start=1):
                rows[todo[done - 1]] = row
                if on_advance:
                    on_advance(1, done / max(time.perf_counter() - start, 1e-9))
                if time.perf_counter() - last_save > options.save_every:
                    save()  # a killed run leaves a predictions.csv that --skip-existing can resume from
                    last_save = time.perf_counter()
    except BaseException:  # Ctrl-C, SIGTERM or a failure: keep the rows of what was written, for a resume
        with contextlib.suppress(Exception):
            save()
        raise
    seconds = time.perf_counter() - start
    final = [row for row in rows if row is not None]
    assert len(final) == len(plan.jobs), "every input gets a row"
    write_rows(final, csv_path)
    json_path = write_rows(final, csv_path.with_suffix(".json"), as_json=True) if options.write_json else None
    if options.shard.enabled:
        write_manifest(out_dir, options.shard, chosen, len(everything.jobs))
    return PredictResult(final, csv_path, json_path, plan.ignored, skipped, seconds)
