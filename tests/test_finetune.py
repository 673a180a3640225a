"""Issue-9 training rules: test_image/ is never read, --init-from, and combined --data folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cxrseg.assets import BUNDLED_MODEL, SAMPLE_DIR
from cxrseg.checkpoint import read_checkpoint
from cxrseg.cli.app import app, main
from tests.conftest import tiny_args, write_dataset


def run_dir(runs: Path) -> Path:
    [run] = list(runs.iterdir())
    return run


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_never_reads_the_test_folders(tmp_path: Path, dataset: Path) -> None:
    for path in (dataset / "test_image").iterdir():
        path.write_bytes(b"not an image: reading this file would fail")
    for path in (dataset / "test_mask").iterdir():
        path.write_bytes(b"")
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, tiny_args(dataset, runs, epochs=1))
    assert result.exit_code == 0, result.output
    assert len(metrics(run_dir(runs))) == 1  # trained and validated on image/ alone


def test_init_from_a_checkpoint_starts_from_its_weights_in_its_shape(tmp_path: Path, dataset: Path) -> None:
    first = tmp_path / "first"
    assert CliRunner().invoke(app, tiny_args(dataset, first, epochs=2)).exit_code == 0
    source = run_dir(first) / "best.safetensors"
    # no shape flags: image size, depth and width come from the checkpoint, not from the defaults (128, 4, 16)
    args = ["train", "--data", str(dataset), "--runs-dir", str(tmp_path / "second"), "--epochs", "1"]
    args += ["--batch-size", "4", "--lr", "1e-12", "--init-from", str(source), "--deterministic"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    tuned = run_dir(tmp_path / "second") / "last.safetensors"
    _, info = read_checkpoint(tuned)
    assert (info.settings.preprocess.image_size, info.settings.model.depth, info.settings.model.base_channels) == (
        32,
        2,
        4,
    )
    before, after = load_file(source), load_file(tuned)
    assert before.keys() == after.keys()
    # a learning rate of 1e-12 leaves the weights where they started: the source's, not a fresh initialisation
    # (batch-norm running statistics still move with the forward passes, so only learnt tensors are compared)
    learnt = [k for k in before if "running" not in k and "num_batches" not in k]
    assert learnt and all(torch.allclose(before[k].float(), after[k].float(), atol=1e-6) for k in learnt)


def test_init_from_names_the_flag_that_conflicts_with_the_checkpoint(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "first"
    assert CliRunner().invoke(app, tiny_args(dataset, first, epochs=1)).exit_code == 0
    source = run_dir(first) / "last.safetensors"
    args = [*tiny_args(dataset, tmp_path / "second", epochs=1), "--init-from", str(source)]
    args[args.index("--base-channels") + 1] = "8"
    monkeypatch.setattr(sys, "argv", ["cxrseg", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code != 0
    out = " ".join(capsys.readouterr().err.split())
    assert "--base-channels 8 (the checkpoint has 4)" in out and "Traceback" not in out
    assert not any((tmp_path / "second").glob("*/*.safetensors"))  # nothing trained


def test_init_from_pretrained_loads_the_bundled_model(tmp_path: Path, dataset: Path) -> None:
    runs = tmp_path / "runs"
    args = ["train", "--data", str(dataset), "--runs-dir", str(runs), "--epochs", "1", "--batch-size", "4"]
    result = CliRunner().invoke(app, [*args, "--lr", "1e-12", "--init-from", "pretrained"])
    assert result.exit_code == 0, result.output
    bundled, bundled_info = read_checkpoint(BUNDLED_MODEL)
    tuned, info = read_checkpoint(run_dir(runs) / "last.safetensors")
    assert info.settings.model == bundled_info.settings.model
    assert info.settings.preprocess == bundled_info.settings.preprocess
    learnt = [k for k in bundled if "running" not in k and "num_batches" not in k]
    assert learnt and all(torch.allclose(bundled[k].float(), tuned[k].float(), atol=1e-3) for k in learnt)


def test_combined_data_folders_keep_their_own_validation_split(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", n_train=10, n_test=1)
    b = write_dataset(tmp_path / "b", n_train=20, n_test=1)
    runs = tmp_path / "runs"
    args = tiny_args(a, runs, epochs=1)
    args[args.index("--data") + 2 : args.index("--data") + 2] = ["--data", str(b)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [row] = metrics(run_dir(runs))
    by_folder = row["val_dice_by_folder"]
    assert set(by_folder) == {str(a), str(b)}
    # overall Dice is the mean over all validation images: 1 from a (10 * 0.1), 2 from b (20 * 0.1)
    assert row["val_dice"] == pytest.approx((by_folder[str(a)] + 2 * by_folder[str(b)]) / 3, abs=1e-6)


def test_the_same_folder_twice_is_refused(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", n_train=10, n_test=1)
    (tmp_path / "link").symlink_to(a)
    for again in (a, tmp_path / "link"):  # the same string, or another path to the folder
        args = tiny_args(a, tmp_path / "runs", epochs=1)
        args[args.index("--data") + 2 : args.index("--data") + 2] = ["--data", str(again)]
        result = CliRunner().invoke(app, args)
        assert f"--data {again} is the same folder as --data {a}" in str(result.exception)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_fine_tuning_one_epoch_beats_ten_epochs_from_scratch_on_real_films(tmp_path: Path) -> None:
    data = tmp_path / "sample"
    for folder in ("image", "mask"):
        (data / folder).mkdir(parents=True)
        for path in (SAMPLE_DIR / folder).iterdir():
            (data / folder / path.name).write_bytes(path.read_bytes())
    common = ["train", "--data", str(data), "--batch-size", "4", "--seed", "0"]
    env = {"CXRSEG_DATA__VAL_FRACTION": "0.25"}  # 5 of the 20 sample films
    tuned_args = [
        *common,
        "--runs-dir",
        str(tmp_path / "t"),
        "--epochs",
        "1",
        "--lr",
        "1e-4",
        "--init-from",
        "pretrained",
    ]
    tuned = CliRunner().invoke(app, tuned_args, env=env)
    assert tuned.exit_code == 0, tuned.output
    scratch = CliRunner().invoke(app, [*common, "--runs-dir", str(tmp_path / "s"), "--epochs", "10"], env=env)
    assert scratch.exit_code == 0, scratch.output
    tuned_best = max(r["val_dice"] for r in metrics(run_dir(tmp_path / "t")))
    scratch_best = max(r["val_dice"] for r in metrics(run_dir(tmp_path / "s")))
    assert tuned_best >= scratch_best, (tuned_best, scratch_best)
    assert tuned_best > 0.9


@pytest.mark.parametrize(
    ("first", "second"), [("--trim-border", "--no-trim-border"), ("--no-trim-border", "--trim-border")]
)
def test_init_from_names_a_preprocessing_switch_that_conflicts_even_when_it_is_the_default(
    first: str,
    second: str,
    tmp_path: Path,
    dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert CliRunner().invoke(app, [*tiny_args(dataset, tmp_path / "first", epochs=1), first]).exit_code == 0
    source = run_dir(tmp_path / "first") / "last.safetensors"
    args = [*tiny_args(dataset, tmp_path / "second", epochs=1), "--init-from", str(source), second]
    monkeypatch.setattr(sys, "argv", ["cxrseg", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code != 0
    out = " ".join(capsys.readouterr().err.split())
    theirs = "on" if first == "--trim-border" else "off"
    assert f"{second} (the checkpoint has trim-border {theirs})" in out and "Traceback" not in out
    assert not (tmp_path / "second").exists() or not any((tmp_path / "second").glob("*/*.safetensors"))
