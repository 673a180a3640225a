"""predict under hostile conditions: undecodable names, full disks, unusable --out, odd files in the inputs."""

from __future__ import annotations

import csv
import errno
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cxrseg.checkpoint import CheckpointInfo, build_model, save_checkpoint
from cxrseg.cli.app import app
from cxrseg.config import InferenceSettings, Settings
from cxrseg.errors import CheckpointError, InputPathError, OutputError
from cxrseg.inference.predict import PredictOptions, predict_paths
from cxrseg.inputs import Plan, plan_inputs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = Settings.model_validate(
        {"preprocess": {"image_size": 32}, "model": {"base_channels": 4, "depth": 2}, "train": {"precision": "fp32"}}
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(path, build_model(settings), CheckpointInfo(settings=settings))
    return path


def xrays(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(folder / name, format="PNG")
    return folder


def predict(inputs, out: Path, checkpoint: Path, **options):
    return predict_paths(inputs, out, checkpoint, InferenceSettings(batch_size=2), PredictOptions(workers=1, **options))


def test_item2_undecodable_name_is_escaped_in_the_table_and_resumes(tmp_path: Path, checkpoint: Path) -> None:
    name = os.fsdecode(b"M\xfcller.png")  # Latin-1 bytes, not UTF-8
    src = xrays(tmp_path / "in", name, "plain.png")
    out = tmp_path / "out"
    result = predict([src], out, checkpoint)
    assert [row["status"] for row in result.rows] == ["ok", "ok"]
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert table[0]["mask"] == "M\\xfcller.png.mask.png" and table[0]["input"].endswith("M\\xfcller.png")
    assert os.path.isfile(os.fsencode(out) + b"/M\xfcller.png.mask.png")  # the mask keeps the real name
    again = predict([src], out, checkpoint, skip_existing=True)
    assert again.skipped == 2


def test_item2_full_disk_keeps_the_table_and_gives_one_line(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = xrays(tmp_path / "in", "a.png", "b.png"), tmp_path / "out"
    predict([src], out, checkpoint)
    before = (out / "predictions.csv").read_bytes()
    real_replace = os.replace

    def full(source, target) -> None:
        if str(target).endswith("predictions.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match=r"predictions.csv: No space left on device \(ENOSPC\)"):
        predict([src], out, checkpoint)
    assert (out / "predictions.csv").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_item2_out_below_a_file_is_one_red_line(tmp_path: Path, checkpoint: Path) -> None:
    src = xrays(tmp_path / "in", "a.png")
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(
        app, ["predict", str(src), "--out", str(tmp_path / "afile" / "sub"), "--checkpoint", str(checkpoint)]
    )
    assert result.exit_code == 1 and isinstance(result.exception, OutputError)
    assert "afile/sub: Not a directory (ENOTDIR)" in str(result.exception)


def test_item5_a_model_too_large_for_memory_is_refused_before_inference(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxrseg.inference.engine as engine_module

    monkeypatch.setattr(engine_module, "available_bytes", lambda device: 1024)  # where the engine is set up
    src, out = xrays(tmp_path / "in", "a.png"), tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"needs about .* GiB per image .* use a smaller model"):
        predict([src], out, checkpoint)
    assert not (out / "a.png.mask.png").exists()


def test_item9_evaluate_csv_given_a_folder_is_one_line_before_any_work(tmp_path: Path, checkpoint: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--csv", str(tmp_path), "--checkpoint", str(checkpoint)])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "is a folder; give a file name" in text


def test_item6_fifo_and_self_link_become_error_rows_without_blocking(tmp_path: Path, checkpoint: Path) -> None:
    src = xrays(tmp_path / "in", "a.png")
    os.mkfifo(src / "pipe")  # no suffix: only the DICOM preamble probe could pick it up
    os.mkfifo(src / "named.png")
    (src / "loop.png").symlink_to(src / "loop.png")
    result = predict([src / "a.png", src / "named.png", src / "loop.png", src], tmp_path / "out", checkpoint)
    by_input = {Path(row["input"]).name: row for row in result.rows}
    assert by_input["a.png"]["status"] == "ok" and "pipe" not in by_input
    assert "not a regular file" in by_input["named.png"]["message"]
    assert by_input["loop.png"]["status"] == "error"


def _plan_within(seconds: int, pattern: str) -> Plan:
    """`plan_inputs([pattern])`, or TimeoutError after `seconds` (a walk that never ends)."""

    def give_up(signum: int, frame: object) -> None:
        raise TimeoutError(f"planning {pattern} took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        return plan_inputs([pattern])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_recursive_glob_over_link_cycles_finishes_with_each_file_once(tmp_path: Path) -> None:
    src = xrays(tmp_path / "in", "a.png")
    xrays(src / "sub", "b.png")
    (src / "up").symlink_to("..")  # in/up/in/up/...: a cycle through the parent
    (src / "sub" / "self").symlink_to(".")  # two through the folder itself: 2**40 paths for glob.glob
    (src / "sub" / "again").symlink_to(".")
    (src / "loop.png").symlink_to("loop.png")  # a link to itself beside them hides nothing
    plan = _plan_within(10, f"{src}/**/*.png")
    assert sorted(job.name for job in plan.jobs if not job.error) == ["a.png", "sub/b.png"]
    assert [Path(job.source).name for job in plan.jobs if job.error] == ["loop.png"]


def test_recursive_glob_refuses_an_out_inside_its_tree(tmp_path: Path, checkpoint: Path) -> None:
    src = xrays(tmp_path / "in", "a.png")
    out = src / "predictions"
    args = ["predict", f"{src}/**/*.png", "--out", str(out), "--checkpoint", str(checkpoint)]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, InputPathError) and result.exception.exit_code == 2  # before loading a model
    assert str(out) in str(result.exception) and f"input folder {src} " in str(result.exception)
    with pytest.raises(InputPathError, match="or inside it"):
        predict([f"{src}/**/*.png"], out, checkpoint)
    assert not out.exists()
