"""What both reports share: the row/card model, number formatting and rendering a Jinja2 template to a file."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

import cxrseg
from cxrseg.files import write_text


@dataclass(frozen=True)
class Column:
    """A table column; `numeric` columns sort as numbers, empty values last."""

    key: str
    label: str
    numeric: bool = True


@dataclass
class Item:
    """One image: a table row and a gallery card that share `index`, filter attributes and sort values."""

    index: int
    name: str  # shown on the card and in the table
    path: str  # full input path, shown as a tooltip
    status: str = "ok"
    flags: list[str] = field(default_factory=list)
    cells: list[tuple[str, str]] = field(default_factory=list)  # (sort value, text) per column
    facts: list[str] = field(default_factory=list)  # short lines on the card
    thumb: str | None = None  # URL of the thumbnail, relative to the report
    thumb_size: tuple[int, int] | None = None  # (width, height), so the page does not jump while loading
    full: str | None = None  # URL of the full-size picture
    message: str = ""


def number(value: object, digits: int = 4) -> str:
    """Text for a table cell: empty for None or NaN."""
    if value is None or value == "":
        return ""
    value = float(value)  # type: ignore[arg-type]
    if math.isnan(value):
        return ""
    return f"{value:.{digits}f}" if digits else f"{value:.0f}"


def cell(value: object, digits: int = 4) -> tuple[str, str]:
    """(sort value, shown text) of a numeric cell."""
    text = number(value, digits)
    return ("" if not text else repr(float(value))), text  # type: ignore[arg-type]


def url(path: Path | str, base: Path | None = None) -> str:
    """A relative URL (percent-encoded, '/' separated) that works from a file:// page.

    Quoted from the path's bytes, so a name that is not valid UTF-8 (kept by os.listdir as surrogates) links to
    the very file."""
    relative = Path(path).relative_to(base) if base is not None else Path(path)
    return quote(os.fsencode(relative.as_posix()))


_ENV = Environment(
    loader=PackageLoader("cxrseg.report", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, path: Path, **context: object) -> Path:
    """Render `template` with `context` and write it atomically to `path` (bytes of names that are not valid
    UTF-8 shown as \\xNN)."""
    page = _ENV.get_template(template).render(
        version=cxrseg.__version__, generated=time.strftime("%Y-%m-%d %H:%M"), **context
    )
    write_text(path, _printable(page))
    return path


def _printable(text: str) -> str:
    """`text` as valid UTF-8: the undecodable bytes os.fsdecode keeps as surrogates become \\xNN, other lone
    surrogates \\uNNNN."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
