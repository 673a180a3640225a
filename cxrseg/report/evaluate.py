"""The evaluate report: metric table, Dice histogram and a worst-first gallery of error maps."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from markupsafe import Markup

from cxrseg.imaging import read_image
from cxrseg.inference.render import overlay, save_png
from cxrseg.metrics import METRICS, Scores
from cxrseg.report.images import LEGEND, save_error_map
from cxrseg.report.page import Column, Item, cell, number, render, url
from cxrseg.report.svg import histogram

if TYPE_CHECKING:
    from cxrseg.inference.evaluate import ImageScore

COLUMNS = (
    Column("name", "image", numeric=False),
    Column("dice", "Dice"),
    Column("iou", "IoU"),
    Column("precision", "precision"),
    Column("recall", "recall"),
    Column("hd95", "HD95 (px)"),
)


@dataclass(frozen=True)
class EvaluateRecord:
    """One scored image and, when made, its error map (paths of files, not pixels: 2,000 of these are small)."""

    name: str
    image: Path
    scores: Scores
    error_map: Path | None = None  # full-size error map picture
    thumb: Path | None = None  # its thumbnail
    thumb_size: tuple[int, int] | None = None  # (width, height)


def files_dir(report: Path) -> Path:
    """Where the pictures of `report` go: report.html -> report_files/ beside it."""
    return report.with_name(report.stem + "_files")


class ErrorMaps:
    """Collects EvaluateRecords for a report at `report`, writing each image's error map as it is scored.

    Pass it as evaluate_model's `on_image`; only the small record is kept, never the masks. Error maps
    (NAME.error.png) go to `pictures` (default: report_files/maps/), with NAME.overlay.png beside them
    when `overlays` is set; thumbnails to report_files/thumbs/.
    """

    def __init__(self, report: Path, pictures: Path | None = None, overlays: bool = False) -> None:
        self.report, self.folder = report, files_dir(report)
        self.pictures, self.overlays = pictures or self.folder / "maps", overlays
        self.records: list[EvaluateRecord] = []
        self._used: set[str] = set()

    def _stem(self, name: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "image"
        unique, count = stem, 1
        while unique in self._used:  # two images with one stem (train/ and test/): keep both
            count += 1
            unique = f"{stem}-{count}"
        self._used.add(unique)
        return unique

    def __call__(self, row: ImageScore, truth: np.ndarray, pred: np.ndarray, gray: np.ndarray | None = None) -> None:
        """Write the error map of one scored image (`gray` read from `row.image` when not given)."""
        if gray is None:
            gray = read_image(row.image)
        stem = self._stem(row.name)
        full, thumb = self.pictures / f"{stem}.error.png", self.folder / "thumbs" / f"{stem}.jpg"
        size = save_error_map(gray, truth, pred, full, thumb)
        if self.overlays:
            save_png(overlay(gray, pred), self.pictures / f"{stem}.overlay.png")
        self.records.append(EvaluateRecord(row.name, Path(row.image), row.scores, full, thumb, size))


def _item(index: int, record: EvaluateRecord, base: Path) -> Item:
    s = record.scores
    cells = [(record.name.lower(), record.name)]
    cells += [cell(getattr(s, metric), 2 if metric == "hd95" else 4) for metric in METRICS]
    hd95 = number(s.hd95, 1) or "undefined"
    facts = [f"Dice {number(s.dice)}", f"HD95 {hd95} px · recall {number(s.recall, 3)}"]
    return Item(
        index=index,
        name=record.name,
        path=str(record.image),
        cells=cells,
        facts=facts,
        thumb=url(record.thumb, base) if record.thumb else None,
        thumb_size=record.thumb_size,
        full=url(record.error_map, base) if record.error_map else None,
    )


def _metric_rows(summary: dict[str, dict[str, float]]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for metric in METRICS:
        stats = summary.get(metric)
        if stats is None:
            continue
        digits = 2 if metric == "hd95" else 4
        label = "hd95 (px)" if metric == "hd95" else metric
        values = (number(stats.get(k, math.nan), digits) for k in ("mean", "sd", "median"))
        rows.append((label, *values, number(stats.get("n", 0), 0)))
    return rows


def write_evaluate_report(
    path: Path,
    records: Sequence[EvaluateRecord],
    summary: dict[str, dict[str, float]],
    title: str = "cxrseg evaluation",
) -> Path:
    """Write an HTML report of scored images to `path`, gallery sorted worst Dice first. Returns `path`.

    `records` come from `ErrorMaps` (with pictures) or are plain EvaluateRecords (table and histogram only);
    picture paths must lie under `path`'s folder.
    """
    base = path.parent
    order = sorted(range(len(records)), key=lambda i: (records[i].scores.dice, records[i].name))
    items = [_item(i, records[i], base) for i in order]
    dice = [r.scores.dice for r in records]
    return render(
        "evaluate.html.j2",
        path,
        title=title,
        n_images=len(records),
        metrics=_metric_rows(summary),
        histogram=Markup(histogram(dice, "Dice", bins=20)),
        columns=COLUMNS,
        items=items,
        errors=[],
        filters=[],
        sorts=[("dice", "asc")],
        legend=[(label, "rgb({},{},{})".format(*colour)) for label, colour in LEGEND],
    )
