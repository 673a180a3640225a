"""Scoring a model on image/mask pairs, each at its mask's own resolution; unreadable pairs become error rows."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from cxrseg.config import InferenceSettings, Settings
from cxrseg.dataset import Pair
from cxrseg.errors import CxrsegError
from cxrseg.files import write_text
from cxrseg.imaging import read_image, read_mask
from cxrseg.inference.engine import Engine, Fitted, engine_for, finish, fit_image
from cxrseg.inference.pipeline import run_pipeline
from cxrseg.inference.table import csv_text, printable
from cxrseg.metrics import METRICS, Scores, distance_unit, score, summarize
from cxrseg.preprocess import Geometry
from cxrseg.runtime import OnnxModel


@dataclass(frozen=True)
class ImageScore:
    """One pair's scores, or why it could not be scored (`error`, then `scores` is None)."""

    name: str
    image: Path
    scores: Scores | None
    error: str = ""


@dataclass
class Evaluation:
    rows: list[ImageScore]  # scored pairs: the summary's population
    summary: dict[str, dict[str, float]]
    failed: list[ImageScore] = field(default_factory=list)  # unreadable pairs, left out of the summary
    distance_unit: str = "px"  # of HD95 and ASSD: mm when the pixel spacing was given

    def as_json(self) -> dict[str, object]:
        """Means per metric, n_images, failures and the full summary; undefined values (NaN) become None (null)."""

        def clean(value: float) -> float | None:
            return None if isinstance(value, float) and math.isnan(value) else value

        out: dict[str, object] = {name: clean(stats["mean"]) for name, stats in self.summary.items()}
        out["n_images"] = len(self.rows)
        out["n_failed"] = len(self.failed)
        out["distance_unit"] = self.distance_unit
        out["failed"] = [{"name": r.name, "image": str(r.image), "error": r.error} for r in self.failed]
        out["summary"] = {n: {k: clean(v) for k, v in stats.items()} for n, stats in self.summary.items()}
        return out


@dataclass(frozen=True)
class LoadedPair:
    fitted: Fitted
    truth: np.ndarray  # (H, W) bool at the mask's own resolution


def load_pair(pair: Pair, size: int, trim: bool = False) -> LoadedPair | str:
    """Decode and fit one pair (in a worker process); a string is the reason it cannot be scored."""
    try:
        image, truth = read_image(pair.image), read_mask(pair.mask)
    except CxrsegError as exc:
        return str(exc)
    except Exception as exc:  # one odd file must not end the evaluation
        return f"{pair.image}: unexpected {type(exc).__name__} while reading ({exc}); check or remove this pair."
    if image.shape != truth.shape:
        return (
            f"{pair.image}: image {image.shape[1]}x{image.shape[0]} px but mask {pair.mask} "
            f"{truth.shape[1]}x{truth.shape[0]} px: image and mask sizes differ; fix or remove this pair."
        )
    return LoadedPair(fit_image(image, size, trim), truth)


Scored = tuple[ImageScore, np.ndarray | None, np.ndarray | None]  # the row; with keep_masks, truth and prediction


def _score(
    pair: Pair,
    loaded: LoadedPair | str,
    prob: np.ndarray | None,
    cfg: InferenceSettings,
    keep_masks: bool = False,
    spacing: tuple[float, float] | None = None,
) -> Scored:
    """Restore, clean and score one prediction (in a worker process)."""
    if isinstance(loaded, str):
        return ImageScore(pair.name, pair.image, None, loaded), None, None
    mask = finish(prob, loaded.fitted.geometry, cfg).mask
    row = ImageScore(pair.name, pair.image, score(mask, loaded.truth, spacing=spacing))
    return (row, loaded.truth, mask) if keep_masks else (row, None, None)


def score_batch(
    engine: Engine,
    images: torch.Tensor,
    valid: torch.Tensor,
    geometries: Sequence[Geometry],
    truths: Sequence[np.ndarray],
    with_hd95: bool = True,
) -> list[Scores]:
    """Score a fitted in-memory batch against its truths, in this process (training validation).

    `with_hd95=False` skips both surface distances (HD95 and ASSD), as training validation does.
    """
    probs = engine.forward(images, valid)
    return [
        score(finish(prob[0], geometry, engine.cfg).mask, truth, with_distances=with_hd95)
        for prob, geometry, truth in zip(probs, geometries, truths, strict=True)
    ]


def default_workers() -> int:
    """Worker processes for decoding and for the work after the model: one per core, at most 4."""
    return min(4, os.cpu_count() or 1)


def evaluate_model(
    model: torch.nn.Module | OnnxModel,
    settings: Settings,
    pairs: Sequence[Pair],
    cfg: InferenceSettings,
    on_advance: Callable[[int], None] | None = None,
    workers: int | None = None,
    on_image: Callable[[ImageScore, np.ndarray, np.ndarray], None] | None = None,
    spacing: tuple[float, float] | None = None,
) -> Evaluation:
    """Dice, IoU, precision, recall, HD95 and ASSD (px) per pair; preprocessing from `settings` (the checkpoint's).

    `model` is the torch U-Net or an OnnxModel (see cxrseg.inference.backend.load_model). A pair that cannot be
    read, or whose image and mask sizes differ, gets an error row and the run goes on. on_image(row, truth,
    predicted mask), called here as each image is scored, can draw it (e.g. a report's error map); the masks
    are not kept, so memory does not grow with the number of images. With `spacing` (row_mm, col_mm) of the
    masks' pixels, HD95 and ASSD are in mm.
    """
    engine = engine_for(model, settings, cfg)
    workers = default_workers() if workers is None else workers
    decode = partial(load_pair, size=engine.size, trim=engine.trim)
    score_one = partial(_score, cfg=cfg, keep_masks=on_image is not None, spacing=spacing)
    rows: list[ImageScore] = []
    # closed as soon as the loop ends, however it ends, so its worker processes end now, not at exit
    with contextlib.closing(run_pipeline(engine, list(pairs), decode, score_one, workers)) as results:
        for row, truth, mask in results:
            rows.append(row)
            if on_image and row.scores is not None:
                on_image(row, truth, mask)
            if on_advance:
                on_advance(1)
    scored = [row for row in rows if row.scores is not None]
    unit = distance_unit(spacing)
    return Evaluation(scored, summarize([r.scores for r in scored]), [row for row in rows if row.error], unit)


def write_csv(evaluation: Evaluation, path: Path) -> None:
    """Per-image rows (name, image, metrics, error), written atomically; failed pairs have empty metrics. As in
    predictions.csv, names that are not valid UTF-8 are written escaped (\\xNN) and text a spreadsheet would
    read as a formula starts with a single quote."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "image", *METRICS, "error"])
    for row in evaluation.rows:
        s = row.scores
        writer.writerow([*_text(row.name, row.image), *(f"{getattr(s, m):.6f}" for m in METRICS), ""])
    for row in evaluation.failed:
        writer.writerow([*_text(row.name, row.image), *("" for _ in METRICS), csv_text(printable(row.error))])
    write_text(path, buffer.getvalue())


def _text(name: str, image: Path) -> tuple[str, str]:
    return csv_text(printable(name)), csv_text(printable(str(image)))
