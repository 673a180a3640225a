"""Sharded prediction: shard choice, manifests, merge checks, and torchrun predict against one process."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from cxrseg.assets import BUNDLED_MODEL, SAMPLE_DIR
from cxrseg.cli.app import app
from cxrseg.config import InferenceSettings
from cxrseg.errors import ConfigError, DataError
from cxrseg.inference.predict import PredictOptions, predict_paths
from cxrseg.inference.shard import Shard, merge_shards, parse_shard, select, shard_of, write_manifest

KEYS = [f"sub{i % 7}/case_{i:04d}.png" for i in range(500)]


def test_parse_shard_accepts_k_of_n_and_refuses_the_rest() -> None:
    assert parse_shard("2/8") == Shard(2, 8)
    assert parse_shard(" 1 / 1 ") == Shard(1, 1)
    for bad in ("0/4", "5/4", "2", "a/b", "-1/3", "2/0"):
        with pytest.raises(ConfigError, match="K/N"):
            parse_shard(bad)


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shards_are_disjoint_and_cover_every_input(count: int) -> None:
    taken = [set(select(KEYS, Shard(k, count))) for k in range(1, count + 1)]
    assert sum(len(t) for t in taken) == len(KEYS)
    assert set().union(*taken) == set(range(len(KEYS)))
    if count > 1:  # a hash spreads the inputs: no shard is empty or holds more than twice its share
        assert all(0 < len(t) < 2 * len(KEYS) / count for t in taken)


def test_shard_membership_does_not_depend_on_listing_order() -> None:
    shuffled = list(KEYS)
    random.Random(1).shuffle(shuffled)
    for k in (1, 2, 3):
        in_order = {KEYS[i] for i in select(KEYS, Shard(k, 3))}
        after_shuffle = {shuffled[i] for i in select(shuffled, Shard(k, 3))}
        assert in_order == after_shuffle
    assert shard_of("a.png", 4) == shard_of("a.png", 4)  # no per-process salt (Python's hash() would have one)


def write_shard(out: Path, shard: Shard, total: int, rows: int | None = None, manifest: bool = True) -> None:
    """A shard table with one row per planned index (or only `rows` of them) and, optionally, its manifest."""
    indices = [i for i in range(total) if shard.takes(f"in{i}.png")]
    lines = ["input,status", *[f"in{i}.png,ok" for i in indices[:rows]]]
    out.mkdir(exist_ok=True)
    (out / shard.csv_name()).write_text("\n".join(lines) + "\n")
    if manifest:
        write_manifest(out, shard, indices, total)


def test_merge_puts_the_rows_back_in_input_order(tmp_path: Path) -> None:
    for k in (1, 2, 3):
        write_shard(tmp_path, Shard(k, 3), total=20)
    path, count, failed = merge_shards(tmp_path)
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert (count, failed) == (20, 0)
    assert [row["input"] for row in rows] == [f"in{i}.png" for i in range(20)]


def test_merge_refuses_a_missing_shard(tmp_path: Path) -> None:
    write_shard(tmp_path, Shard(1, 3), total=20)
    write_shard(tmp_path, Shard(3, 3), total=20)
    with pytest.raises(DataError, match="Shard 2/3 is missing"):
        merge_shards(tmp_path)
    assert not (tmp_path / "predictions.csv").exists()


def test_merge_refuses_a_shard_still_running_or_cut_short(tmp_path: Path) -> None:
    write_shard(tmp_path, Shard(1, 2), total=20)
    write_shard(tmp_path, Shard(2, 2), total=20, manifest=False)  # killed before its manifest was written
    with pytest.raises(DataError, match="Shard 2/2 is incomplete"):
        merge_shards(tmp_path)
    write_shard(tmp_path, Shard(2, 2), total=20, rows=2)  # a manifest, but rows missing from the table
    with pytest.raises(DataError, match="Shard 2/2 is partial"):
        merge_shards(tmp_path)


def test_merge_refuses_shards_of_different_runs(tmp_path: Path) -> None:
    write_shard(tmp_path, Shard(1, 2), total=20)
    write_shard(tmp_path, Shard(2, 2), total=21)
    with pytest.raises(DataError, match="different runs"):
        merge_shards(tmp_path)
    (tmp_path / "predictions.1-of-3.csv").write_text("input,status\n")
    with pytest.raises(DataError, match="different splits"):
        merge_shards(tmp_path)


def test_merge_without_shards_says_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--shard K/N"):
        merge_shards(tmp_path)


SAMPLE_INPUTS = [SAMPLE_DIR / "image", SAMPLE_DIR / "test_image"]
REPO = Path(__file__).resolve().parent.parent


def single_run_table(out: Path) -> str:
    options = PredictOptions(overlay=False)
    predict_paths(SAMPLE_INPUTS, out, BUNDLED_MODEL, InferenceSettings(device="cpu", backend="torch"), options)
    return (out / "predictions.csv").read_text()


@pytest.mark.slow  # three predict runs of the bundled model
def test_shards_of_a_predict_run_merge_into_the_single_process_table(tmp_path: Path) -> None:
    cfg = InferenceSettings(device="cpu", backend="torch")
    counts = []
    for k in (1, 2):
        options = PredictOptions(overlay=False, shard=Shard(k, 2))
        counts.append(len(predict_paths(SAMPLE_INPUTS, tmp_path / "sharded", BUNDLED_MODEL, cfg, options).rows))
    assert sum(counts) == 24 and min(counts) > 0
    assert not (tmp_path / "sharded" / "predictions.csv").exists()
    result = CliRunner().invoke(app, ["predict", "--merge", str(tmp_path / "sharded")])
    assert result.exit_code == 0, result.output
    merged = (tmp_path / "sharded" / "predictions.csv").read_text()
    assert merged == single_run_table(tmp_path / "single")


@pytest.mark.slow
def test_torchrun_predict_writes_one_table_equal_to_a_single_process_run(tmp_path: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "cxrseg", "predict"]
    command += [*map(str, SAMPLE_INPUTS), "--out", str(tmp_path / "ranks"), "--device", "cpu", "--no-overlay"]
    command += ["--checkpoint", str(BUNDLED_MODEL), "--backend", "torch"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Merged 24 rows" in done.stderr
    assert sorted(p.name for p in (tmp_path / "ranks").glob("predictions.*")) == [
        "predictions.1-of-2.csv",
        "predictions.1-of-2.manifest.json",
        "predictions.2-of-2.csv",
        "predictions.2-of-2.manifest.json",
        "predictions.csv",
    ]
    assert (tmp_path / "ranks" / "predictions.csv").read_text() == single_run_table(tmp_path / "single")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from cxrseg.checkpoint import CheckpointInfo, build_model, save_checkpoint
    from cxrseg.config import Settings

    settings = Settings.model_validate({"preprocess": {"image_size": 32}, "model": {"base_channels": 4, "depth": 2}})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(path, build_model(settings), CheckpointInfo(settings=settings))
    return path


def sharded_run(tmp_path: Path, checkpoint: Path) -> Path:
    """Both shards of a prediction of 6 synthetic films (one unreadable) into one folder, not merged."""
    from tests.conftest import ellipse_pair

    films, out = tmp_path / "films", tmp_path / "out"
    films.mkdir()
    for i in range(5):
        Image.fromarray(ellipse_pair(i)[0]).save(films / f"case_{i}.png")
    (films / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for k in (1, 2):
        options = PredictOptions(shard=Shard(k, 2), workers=1)
        predict_paths([films], out, checkpoint, InferenceSettings(device="cpu", backend="torch"), options)
    return out


def test_merge_with_report_writes_the_report_of_every_shard(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """`predict --merge OUT --report` ignored --report; it now writes the report of the merged
    table, every shard's inputs in it."""
    out = sharded_run(tmp_path, tiny_checkpoint)
    result = CliRunner().invoke(app, ["predict", "--merge", str(out), "--report"])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count('<figure class="card') == 6 and "broken.png" in html
    assert len(list((out / "report_files" / "thumbs").glob("*.jpg"))) == 5


def test_a_shard_refuses_report_before_any_work(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """`predict --shard K/N --report` wrote report.html of its own shard only, each shard
    overwriting the last; it is now refused (exit 2, nothing written), pointing at `--merge OUT --report`."""
    films, out = tmp_path / "films", tmp_path / "out"
    films.mkdir()
    Image.new("L", (32, 32), 50).save(films / "a.png")
    args = ["predict", str(films), "--out", str(out), "--checkpoint", str(tiny_checkpoint), "--report"]
    result = CliRunner().invoke(app, [*args, "--shard", "1/2"])
    assert result.exit_code == 2 and "--merge" in result.output
    assert not out.exists()


def test_torchrun_rank_0_writes_the_report_of_the_merged_table(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun each rank wrote report.html of its own shard; rank 0 now writes it from the
    merged table once every rank is done (the other ranks write none)."""
    from cxrseg.cli import predict as predict_cli
    from cxrseg.inference import shard as shard_module

    out = sharded_run(tmp_path, tiny_checkpoint)
    merged = merge_shards(out)
    monkeypatch.setattr(shard_module, "barrier_then_merge", lambda out_dir, part: None)
    predict_cli._finish(0, out, Shard(2, 2), distributed=True, report=True)
    assert not (out / "report.html").exists()
    monkeypatch.setattr(shard_module, "barrier_then_merge", lambda out_dir, part: merged)
    with pytest.raises(typer.Exit):  # one input failed: exit code 1
        predict_cli._finish(0, out, Shard(1, 2), distributed=True, report=True)
    assert (out / "report.html").read_text(encoding="utf-8").count('<figure class="card') == 6
