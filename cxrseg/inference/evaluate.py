"""Scoring a model on image/mask pairs, each at its mask's own resolution."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrseg.config import InferenceSettings, Settings
from cxrseg.dataset import Pair, check_sizes
from cxrseg.files import write_text
from cxrseg.imaging import read_image, read_mask
from cxrseg.inference.backend import place
from cxrseg.inference.engine import forward_probabilities, probabilities_to_masks
from cxrseg.memory import available_bytes, fit_batch_size
from cxrseg.metrics import METRICS, Scores, score, summarize
from cxrseg.preprocess import Geometry, fit_to_square, valid_region
from cxrseg.runtime import OnnxModel


@dataclass(frozen=True)
class ImageScore:
    name: str
    image: Path
    scores: Scores


@dataclass
class Evaluation:
    rows: list[ImageScore]
    summary: dict[str, dict[str, float]]

    def as_json(self) -> dict[str, object]:
        """Means per metric, n_images and the full summary; undefined values (NaN) become None (null)."""

        def clean(value: float) -> float | None:
            return None if isinstance(value, float) and math.isnan(value) else value

        out: dict[str, object] = {name: clean(stats["mean"]) for name, stats in self.summary.items()}
        out["n_images"] = len(self.rows)
        out["summary"] = {n: {k: clean(v) for k, v in stats.items()} for n, stats in self.summary.items()}
        return out


Loaded = tuple[np.ndarray, np.ndarray, Geometry]


def _load(pair: Pair, size: int) -> Loaded:
    image, geometry = fit_to_square(read_image(pair.image), size)
    return image, read_mask(pair.mask), geometry


def prefetched_batches(pairs: Sequence[Pair], size: int, batch_size: int, workers: int = 2) -> Iterator[list[Loaded]]:
    """Decode batch k+1 in threads while the caller computes on batch k."""
    chunks = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
    with ThreadPoolExecutor(workers) as pool:
        pending = [pool.submit(lambda c=c: [_load(p, size) for p in c]) for c in chunks[:1]]
        for index in range(len(chunks)):
            if index + 1 < len(chunks):
                pending.append(pool.submit(lambda c=chunks[index + 1]: [_load(p, size) for p in c]))
            yield pending.pop(0).result()


def score_batch(
    model: torch.nn.Module,
    images: torch.Tensor,
    valid: torch.Tensor,
    geometries: Sequence[Geometry],
    truths: Sequence[np.ndarray],
    cfg: InferenceSettings,
    device: torch.device,
    dtype: torch.dtype | None,
    with_hd95: bool = True,
) -> list[Scores]:
    """Predict a fitted batch, restore each map to its original size and score it against the truth.

    `with_hd95=False` skips both surface distances (HD95 and ASSD), as training validation does.
    """
    probs = forward_probabilities(model, images, valid, device, dtype, tta=cfg.tta)
    masks = probabilities_to_masks(probs, geometries, cfg)
    return [score(mask, truth, with_distances=with_hd95) for (_, mask), truth in zip(masks, truths, strict=True)]


def evaluate_model(
    model: torch.nn.Module | OnnxModel,
    settings: Settings,
    pairs: Sequence[Pair],
    cfg: InferenceSettings,
    on_advance: Callable[[int], None] | None = None,
) -> Evaluation:
    """Dice, IoU, precision, recall, HD95 and ASSD (px) per pair; preprocessing from `settings` (the checkpoint's).

    `model` is the torch U-Net or an OnnxModel (see cxrseg.inference.backend.load_model).
    """
    check_sizes(pairs)
    placed = place(model, settings, cfg)
    size = settings.preprocess.image_size
    rows: list[ImageScore] = []
    done = 0
    batch_size, _ = fit_batch_size(settings, cfg.batch_size, available_bytes(placed.device))
    for batch in prefetched_batches(pairs, size, batch_size):
        images = torch.from_numpy(np.stack([b[0] for b in batch]))[:, None]
        valid = torch.from_numpy(np.stack([valid_region(b[2]) for b in batch]))[:, None]
        geometries, truths = [b[2] for b in batch], [b[1] for b in batch]
        scores = score_batch(placed.model, images, valid, geometries, truths, cfg, placed.device, placed.dtype)
        for pair, item in zip(pairs[done : done + len(batch)], scores, strict=True):
            rows.append(ImageScore(pair.name, pair.image, item))
        done += len(batch)
        if on_advance:
            on_advance(len(batch))
    return Evaluation(rows, summarize([r.scores for r in rows]))


def write_csv(evaluation: Evaluation, path: Path) -> None:
    """Per-image rows (name, image, metrics), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "image", *METRICS])
    for row in evaluation.rows:
        s = row.scores
        writer.writerow([row.name, row.image, *(f"{getattr(s, m):.6f}" for m in METRICS)])
    write_text(path, buffer.getvalue())
