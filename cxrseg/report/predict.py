"""The predict report: counts, a filterable gallery of overlay thumbnails, the table and the failed inputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePath
from typing import Any

from cxrseg.inference.quality import FLAGS
from cxrseg.report.images import thumbnail_of
from cxrseg.report.page import Column, Item, cell, number, render, url

REPORT_NAME, FILES_NAME = "report.html", "report_files"
COLUMNS = (
    Column("name", "file", numeric=False),
    Column("status", "status", numeric=False),
    Column("lung_px", "lung px"),
    Column("lung_fraction", "lung fraction"),
    Column("right_lung_px", "right lung px"),
    Column("left_lung_px", "left lung px"),
    Column("lung_mm2", "lung mm²"),
    Column("border_confidence", "border confidence"),
    Column("mean_probability", "mean probability"),
    Column("flags", "flags", numeric=False),
)
DIGITS = {  # decimals shown for each numeric column, in COLUMNS order
    "lung_px": 0, "lung_fraction": 4, "right_lung_px": 0, "left_lung_px": 0, "lung_mm2": 0,
    "border_confidence": 4, "mean_probability": 4,
}  # fmt: skip


def _picture(out_dir: Path, row: dict[str, Any]) -> str | None:
    """The row's overlay (else its mask), relative to `out_dir`; None for an error row, a row without a picture,
    or a path that leads outside `out_dir` (a hand-edited table: the report reads and links only its own files)."""
    source = row.get("overlay") or row.get("mask")
    if row.get("status") != "ok" or not source:
        return None
    return str(source) if _inside(out_dir / str(source), out_dir) else None


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path`, links and `..` resolved, lies in `folder`."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a link loop
        return False


def _thumb(out_dir: Path, row: dict[str, Any]) -> tuple[str, tuple[int, int]] | None:
    """Thumbnail of the row's picture (_picture) under report_files/thumbs/; None when there is none."""
    source = _picture(out_dir, row)
    if source is None:
        return None
    thumbs = out_dir / FILES_NAME / "thumbs"
    target = thumbs / (source + ".jpg")
    if not _inside(target, thumbs):
        return None
    try:
        return url(target, out_dir), thumbnail_of(out_dir / source, target)
    except OSError:  # deleted or unreadable picture: the card says so, the report is still written
        return None


def _item(index: int, row: dict[str, Any], thumb: tuple[str, tuple[int, int]] | None, picture: str | None) -> Item:
    flags = [flag for flag in (row.get("flags") or "").split(";") if flag]
    name = PurePath(str(row["input"])).name
    ok = row.get("status") == "ok"
    cells = [(name.lower(), name), (row["status"], row["status"])]
    cells += [cell(row.get(key), DIGITS[key]) for key in DIGITS]
    cells.append((" ".join(flags), ", ".join(flags)))
    facts = []
    if ok:
        facts.append(f"lungs {number(row.get('lung_fraction'), 3)} of the film")
        facts.append(f"right {number(row.get('right_lung_px'), 0)} px, left {number(row.get('left_lung_px'), 0)} px")
    return Item(
        index=index,
        name=name,
        path=str(row["input"]),
        status=str(row["status"]),
        flags=flags,
        cells=cells,
        facts=facts,
        thumb=thumb[0] if thumb else None,
        thumb_size=thumb[1] if thumb else None,
        full=url(picture) if picture else None,
        message=str(row.get("message") or ""),
    )


def _counts(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    flagged = [[f for f in (row.get("flags") or "").split(";") if f] for row in rows]
    return {
        "total": len(rows),
        "ok": sum(row.get("status") == "ok" for row in rows),
        "error": sum(row.get("status") != "ok" for row in rows),
        "flagged": sum(bool(flags) for flags in flagged),
        "flags": {flag: sum(flag in flags for flags in flagged) for flag in FLAGS},
    }


def write_predict_report(
    out_dir: Path, rows: Sequence[dict[str, Any]], title: str = "cxrseg predictions", workers: int | None = None
) -> Path:
    """Write `out_dir/report.html` for predictions.csv rows whose mask/overlay paths are relative to `out_dir`.

    Thumbnails (longest side 256 px) go to `out_dir/report_files/thumbs/`, made in `workers` threads and
    reused when newer than their overlay. Returns the report's path.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers, thread_name_prefix="cxrseg-thumb") as pool:
        thumbs = list(pool.map(lambda row: _thumb(out_dir, row), rows))
    items = [
        _item(index, row, thumb, _picture(out_dir, row))
        for index, (row, thumb) in enumerate(zip(rows, thumbs, strict=True))
    ]
    filters = [("all", "all images"), ("status:ok", "ok"), ("status:error", "errors"), ("flag:any", "any flag")]
    filters += [(f"flag:{flag}", flag) for flag in FLAGS]
    return render(
        "predict.html.j2",
        out_dir / REPORT_NAME,
        title=title,
        counts=_counts(rows),
        columns=COLUMNS,
        items=items,
        errors=[item for item in items if item.status != "ok"],
        filters=filters,
        sorts=[("name", "asc")],
        legend=None,
    )
