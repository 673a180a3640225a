"""The predictions table (predictions.csv / .json): its columns, and writing and reading it back safely."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrseg.errors import DataError
from cxrseg.files import write_text

# predictions.csv columns and their types (docs/predict.md describes each); empty cells: '' for text, else None
COLUMNS: dict[str, type] = {
    "input": str, "status": str, "message": str, "mask": str, "overlay": str, "height": int, "width": int,
    "lung_px": int, "lung_fraction": float, "right_lung_px": int, "left_lung_px": int,
    "spacing_row_mm": float, "spacing_col_mm": float, "spacing_source": str,
    "lung_mm2": float, "right_lung_mm2": float, "left_lung_mm2": float, "components": int, "raw_components": int,
    "mean_probability": float, "border_confidence": float, "midline_contrast": float, "flags": str,
}  # fmt: skip


def empty_row() -> dict[str, Any]:
    """A row with every column: empty text, None for numbers."""
    return {name: "" if kind is str else None for name, kind in COLUMNS.items()}


def printable(text: str) -> str:
    """A file name as valid UTF-8: bytes that are not UTF-8 (kept by os.fsdecode as surrogates) become \\xNN."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


# a spreadsheet reads a cell starting with one of these as a formula (OWASP: CSV injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell a spreadsheet shows as text: a single quote before a leading = + - @ tab or CR (OWASP's advice),
    and before a leading quote, so that from_csv_text gives back every text exactly."""
    return "'" + text if text.startswith((*FORMULA_START, "'")) else text


def from_csv_text(text: str) -> str:
    """The text csv_text was given."""
    return text[1:] if text.startswith("'") else text


def write_rows(rows: Sequence[dict[str, Any]], path: Path, as_json: bool = False) -> Path:
    """Rows as CSV (empty cell for a missing value) or as a JSON list (null), written atomically; names that are
    not valid UTF-8 are written escaped, and CSV text cells that a spreadsheet would read as a formula start with
    a single quote (csv_text; read_rows removes it)."""
    full = [{name: _clean(row.get(name)) for name in COLUMNS} for row in rows]
    if as_json:
        write_text(path, json.dumps(full, indent=1) + "\n")
        return path
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(k, v) for k, v in row.items()} for row in full)
    write_text(path, buffer.getvalue())
    return path


def _cell(name: str, value: Any) -> Any:
    if value is None:
        return ""
    return csv_text(value) if COLUMNS[name] is str and isinstance(value, str) else value


def _clean(value: Any) -> Any:
    return printable(value) if isinstance(value, str) else value


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of a previous predictions.csv keyed by their mask column (unusable rows are left out)."""
    if not path.is_file():
        return {}
    # a row written by another version or edited by hand is left out: predict this input again
    return {row["mask"]: row for row in read_table(path, "move it away to start afresh") if row and row["mask"]}


def read_table(path: Path, advice: str) -> list[dict[str, Any] | None]:
    """Every row of a predictions.csv in order, typed as written (None for a row that cannot be read back);
    DataError (saying `advice`) when the file is not a readable table."""
    rows: list[dict[str, Any] | None] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for raw in csv.DictReader(handle):
                try:
                    rows.append({k: _read_cell(raw[k], kind) for k, kind in COLUMNS.items()})
                except (KeyError, ValueError):
                    rows.append(None)
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable predictions table ({exc}); {advice}.") from exc
    return rows


def _read_cell(text: str, kind: type) -> Any:
    if not text:
        return "" if kind is str else None
    return from_csv_text(text) if kind is str else kind(text)
