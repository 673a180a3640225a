"""Prediction split across processes or machines: which inputs a shard takes, its manifest, and the merge."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cxrseg.errors import ConfigError, DataError
from cxrseg.files import write_text

CSV_NAME = "predictions.csv"


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`: the inputs whose key hashes to index - 1 modulo count."""

    index: int = 1
    count: int = 1

    @property
    def enabled(self) -> bool:
        return self.count > 1

    @property
    def label(self) -> str:
        return f"{self.index}-of-{self.count}"

    def takes(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index - 1

    def csv_name(self) -> str:
        return f"predictions.{self.label}.csv" if self.enabled else CSV_NAME

    def manifest_name(self) -> str:
        return f"predictions.{self.label}.manifest.json"


def parse_shard(text: str) -> Shard:
    """'K/N' with 1 <= K <= N, as given to --shard."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. --shard 2/8.")
    return Shard(int(match[1]), int(match[2]))


def shard_of(key: str, count: int) -> int:
    """0-based shard of an input key: a hash, so neither listing order nor other inputs change it."""
    digest = hashlib.sha256(os.fsencode(key)).digest()  # UTF-8 for valid names; names that are not UTF-8 too
    return int.from_bytes(digest[:8], "big") % count


def select(keys: Sequence[str], shard: Shard) -> list[int]:
    """Positions of the keys this shard takes, in their given order."""
    return [i for i, key in enumerate(keys) if shard.takes(key)]


def write_manifest(out_dir: Path, shard: Shard, indices: Sequence[int], total: int) -> Path:
    """Written last, when every row of the shard's CSV is final: its presence marks the shard complete."""
    path = out_dir / shard.manifest_name()
    record = {"shard": shard.index, "shards": shard.count, "total": total, "planned": len(indices)}
    write_text(path, json.dumps(record | {"indices": list(indices)}) + "\n")
    return path


def _read_shard(out_dir: Path, shard: Shard) -> tuple[list[str], list[tuple[int, list[str]]], int]:
    """(CSV header, (plan index, row) pairs, plan total) of one finished shard; DataError when it is not."""
    manifest, table = out_dir / shard.manifest_name(), out_dir / shard.csv_name()
    rerun = f"run `cxrseg predict ... --shard {shard.index}/{shard.count} --skip-existing --out {out_dir}` again"
    if not table.is_file():
        raise DataError(f"Shard {shard.index}/{shard.count} is missing: no {table}; {rerun}.")
    if not manifest.is_file():
        raise DataError(f"Shard {shard.index}/{shard.count} is incomplete: no {manifest}; {rerun}.")
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
        with table.open(newline="", encoding="utf-8") as handle:
            header, *rows = list(csv.reader(handle))
        indices = [int(i) for i in record["indices"]]
        total, planned = int(record["total"]), int(record["planned"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"Shard {shard.index}/{shard.count} in {out_dir} is unreadable ({exc}); {rerun}.") from exc
    if (record.get("shard"), record.get("shards")) != (shard.index, shard.count):
        raise DataError(f"{manifest} describes shard {record.get('shard')}/{record.get('shards')}; {rerun}.")
    if not len(rows) == len(indices) == planned:
        raise DataError(
            f"Shard {shard.index}/{shard.count} is partial: {len(rows)} rows in {table}, {planned} planned; {rerun}."
        )
    return header, list(zip(indices, rows, strict=True)), total


def find_shard_count(out_dir: Path) -> int:
    """N of the shard manifests or tables in `out_dir`; DataError when there are none or they disagree."""
    counts = {
        int(m[2])
        for p in out_dir.glob("predictions.*-of-*.*")
        if (m := re.fullmatch(r"predictions\.(\d+)-of-(\d+)\.(csv|manifest\.json)", p.name))
    }
    if not counts:
        raise DataError(f"No shard tables (predictions.K-of-N.csv) in {out_dir}; run `cxrseg predict --shard K/N`.")
    if len(counts) > 1:
        raise DataError(f"{out_dir} holds shards of different splits (N = {sorted(counts)}); keep one split only.")
    return counts.pop()


def merge_shards(out_dir: Path, count: int | None = None) -> tuple[Path, int, int]:
    """Check that shards 1..N in `out_dir` are all complete and together cover each planned input once, then
    write predictions.csv in the single-process order. Returns (its path, rows, rows whose status is not ok)."""
    count = count or find_shard_count(out_dir)
    headers, pairs, totals = set(), [], set()
    for index in range(1, count + 1):
        header, rows, total = _read_shard(out_dir, Shard(index, count))
        headers.add(tuple(header))
        pairs.extend(rows)
        totals.add(total)
    if len(headers) > 1 or len(totals) > 1:
        raise DataError(f"The shards in {out_dir} come from different runs (other inputs or versions); rerun them.")
    total = totals.pop()
    if sorted(i for i, _ in pairs) != list(range(total)):
        raise DataError(f"The shards in {out_dir} do not cover the {total} inputs exactly once; rerun them.")
    header = headers.pop()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(row for _, row in sorted(pairs, key=lambda pair: pair[0]))
    path = out_dir / CSV_NAME
    write_text(path, buffer.getvalue())
    status = header.index("status") if "status" in header else None
    failed = sum(row[status] != "ok" for _, row in pairs) if status is not None else 0
    return path, total, failed


def barrier_then_merge(out_dir: Path, shard: Shard) -> tuple[Path, int, int] | None:
    """Under torchrun: wait until every rank has written its shard, then rank 0 (shard 1) merges them.
    Uses gloo, which needs no GPU, and a long timeout, as ranks may finish hours apart."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=timedelta(hours=24))
    try:
        dist.barrier()
        return merge_shards(out_dir, shard.count) if shard.index == 1 else None
    finally:
        dist.destroy_process_group()
