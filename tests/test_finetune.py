"""Training rules: test_image/ is never read, --init-from, and combined --data folders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cxrseg.assets import BUNDLED_MODEL, SAMPLE_DIR
from cxrseg.checkpoint import atomic_save, checkpoint_metadata, read_checkpoint
from cxrseg.cli.app import app, main
from cxrseg.dataset import dataset_splits, film_key
from cxrseg.errors import ConfigError, DataError
from tests.conftest import tiny_args, write_dataset


def run_dir(runs: Path) -> Path:
    [run] = list(runs.iterdir())
    return run


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_never_reads_the_test_folders(tmp_path: Path, dataset: Path) -> None:
    """Not their files, nor their listing: an unpaired file there (a test set without masks) must not stop it."""
    for path in (dataset / "test_image").iterdir():
        path.write_bytes(b"not an image: reading this file would fail")
    for path in (dataset / "test_mask").iterdir():
        path.write_bytes(b"")
    next((dataset / "test_mask").iterdir()).unlink()
    (dataset / "test_image" / "stray.png").write_bytes(b"")
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


def test_combined_data_folders_keep_their_own_validation_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = write_dataset(tmp_path / "a", n_train=10, n_test=1)
    b = write_dataset(tmp_path / "b", n_train=20, n_test=1)
    monkeypatch.setenv("CXRSEG_DATA__VAL_FRACTION", "0.3")
    n_a, n_b = (len(dataset_splits(folder, 0.3)["val"]) for folder in (a, b))
    assert n_a != n_b  # else the pooled mean and the mean of the two folders' means would agree
    runs = tmp_path / "runs"
    args = tiny_args(a, runs, epochs=1)
    args[args.index("--data") + 2 : args.index("--data") + 2] = ["--data", str(b)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [row] = metrics(run_dir(runs))
    by_folder = row["val_dice_by_folder"]
    assert set(by_folder) == {str(a), str(b)}
    # overall Dice is the mean over all validation images, each folder's split its own
    expected = (n_a * by_folder[str(a)] + n_b * by_folder[str(b)]) / (n_a + n_b)
    assert row["val_dice"] == pytest.approx(expected, abs=1e-6)


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


@pytest.mark.slow  # one epoch of the bundled model at 256 px
def test_a_fine_tune_at_the_default_learning_rate_keeps_what_its_start_learnt(tmp_path: Path) -> None:
    """No --lr: a fine-tune peaks at 1e-3, not the from-scratch 1e-2 that drags the bundled model down in an epoch."""
    data = tmp_path / "sample"
    for folder in ("image", "mask"):
        shutil.copytree(SAMPLE_DIR / folder, data / folder)
    args = ["train", "--data", str(data), "--runs-dir", str(tmp_path / "t"), "--batch-size", "4", "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--init-from", "pretrained"], env={"CXRSEG_DATA__VAL_FRACTION": "0.25"})
    assert result.exit_code == 0, result.output
    [epoch] = metrics(run_dir(tmp_path / "t"))
    assert epoch["lr"] == pytest.approx(1e-5)  # the cosine ends an epoch at 1 % of the peak
    assert epoch["val_dice"] > 0.93, epoch
    saved = json.loads((run_dir(tmp_path / "t") / "settings.json").read_text())
    assert saved["train"]["lr"] == 1e-3  # the rate used is written down, for older versions and for readers


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


def test_a_shape_setting_from_the_environment_that_conflicts_with_init_from_is_named(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CXRSEG_* value is asked for as much as a flag or a config file's: it must not be dropped silently for
    the checkpoint's (the defaults compared against are the sections' own, not Settings(), which reads the
    environment)."""
    monkeypatch.setenv("CXRSEG_PREPROCESS__IMAGE_SIZE", "64")
    args = ["train", "--data", str(dataset), "--runs-dir", str(tmp_path / "runs"), "--init-from", "pretrained"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, ConfigError)  # exit code 2 through main()
    assert "--image-size 64 (the checkpoint has 256)" in str(result.exception)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/*.safetensors"))


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_init_from_a_path_that_is_no_file_names_the_flag(tmp_path: Path, dataset: Path, where: str) -> None:
    target = tmp_path / "nothing.safetensors"
    if where == "folder":
        target = tmp_path
    args = ["train", "--data", str(dataset), "--runs-dir", str(tmp_path / "runs"), "--init-from", str(target)]
    result = CliRunner().invoke(app, args)
    message = str(result.exception)
    assert isinstance(result.exception, ConfigError)  # exit code 2 through main()
    assert message.startswith(f"--init-from {target}") and "--checkpoint" not in message


def test_resuming_a_fine_tune_needs_only_the_run_folder(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its state holds the weights and settings.json the shape: the checkpoint it started from may have been
    moved or deleted since, or been named by a relative path from another folder."""
    assert CliRunner().invoke(app, tiny_args(dataset, tmp_path / "first", epochs=1)).exit_code == 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "init.safetensors").write_bytes((run_dir(tmp_path / "first") / "best.safetensors").read_bytes())
    args = ["train", "--data", str(dataset), "--runs-dir", str(tmp_path / "second"), "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "4", "--init-from", "init.safetensors"])
    assert result.exit_code == 0, result.output
    run = run_dir(tmp_path / "second")
    saved = json.loads((run / "settings.json").read_text())["train"]["init_from"]
    assert saved == str(tmp_path / "init.safetensors")  # absolute: the run names it from anywhere
    (tmp_path / "init.safetensors").unlink()
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert [row["epoch"] for row in metrics(run)] == [1, 2]


def test_the_same_file_names_in_two_data_folders_are_warned_about(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", n_train=6, n_test=1)
    b = write_dataset(tmp_path / "b", n_train=8, n_test=1)  # case_000 .. case_005 are in both
    args = tiny_args(a, tmp_path / "runs", epochs=1)
    args[args.index("--data") + 2 : args.index("--data") + 2] = ["--data", str(b)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "6 file names are in more than one --data folder: case_000, case_001" in out


def test_a_fine_tune_never_validates_on_films_its_checkpoint_learnt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundled model (split by `shuffle`) fine-tuned on a copy of its films under the `name` default validated
    on 41 of 45 films it had learnt. Checkpoints record the films they were fitted on; a fine-tune on a folder
    holding them (wherever it lies) takes the checkpoint's split, and a film learnt never stays in `val`."""
    dataset = write_dataset(tmp_path / "data", n_train=20)
    monkeypatch.setenv("CXRSEG_DATA__SPLIT_RULE", "shuffle")
    monkeypatch.setenv("CXRSEG_DATA__VAL_FRACTION", "0.3")
    assert CliRunner().invoke(app, tiny_args(dataset, tmp_path / "first", epochs=1)).exit_code == 0
    _, first = read_checkpoint(run_dir(tmp_path / "first") / "best.safetensors")
    learnt = {film_key(pair.name) for pair in dataset_splits(dataset, 0.3, rule="shuffle")["train"]}
    assert first.trained_on == learnt  # the 14 `train` films, none of `val`
    monkeypatch.delenv("CXRSEG_DATA__SPLIT_RULE")
    monkeypatch.delenv("CXRSEG_DATA__VAL_FRACTION")
    copy = tmp_path / "copy"  # the same films in another place: the path does not tell
    shutil.copytree(dataset, copy)
    args = ["--epochs", "1", "--batch-size", "4", "--init-from", str(run_dir(tmp_path / "first") / "best.safetensors")]
    result = CliRunner().invoke(app, ["train", "--data", str(copy), "--runs-dir", str(tmp_path / "same"), *args])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "Split: the --init-from checkpoint's (data.split_rule shuffle, val_fraction 0.3" in out
    assert "moved to training" not in out  # its own split: its `val` films are unseen
    _, tuned = read_checkpoint(run_dir(tmp_path / "same") / "last.safetensors")
    assert tuned.trained_on == learnt

    monkeypatch.setenv("CXRSEG_DATA__SPLIT_SEED", "5")  # another split asked for: the learnt films leave `val`
    result = CliRunner().invoke(app, ["train", "--data", str(copy), "--runs-dir", str(tmp_path / "asked"), *args])
    assert result.exit_code == 0, result.output
    assert "validation films moved to training" in " ".join(result.output.split())
    settings = json.loads((run_dir(tmp_path / "asked") / "settings.json").read_text())
    _, asked = read_checkpoint(run_dir(tmp_path / "asked") / "last.safetensors")
    val = dataset_splits(copy, 0.3, 5, rule="shuffle")["val"]
    assert settings["data"]["split_seed"] == 5 and any(film_key(p.name) in learnt for p in val)
    assert learnt <= asked.trained_on  # what the start learnt stays recorded
    monkeypatch.delenv("CXRSEG_DATA__SPLIT_SEED")

    other = tmp_path / "other"  # films the checkpoint never saw: the default split
    for folder in ("image", "mask"):
        (other / folder).mkdir(parents=True)
        for file in (dataset / folder).iterdir():
            shutil.copy(file, other / folder / f"other_{file.name}")
    result = CliRunner().invoke(app, ["train", "--data", str(other), "--runs-dir", str(tmp_path / "new"), *args])
    assert result.exit_code == 0, result.output
    data = json.loads((run_dir(tmp_path / "new") / "settings.json").read_text())["data"]
    assert (data["split_rule"], data["val_fraction"]) == ("name", 0.1)


def test_evaluate_leaves_out_of_val_the_films_a_checkpoint_learnt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the `shuffle` rule a changed folder reshuffles; whatever the cause, a film recorded as learnt is
    not scored as `val`."""
    dataset = write_dataset(tmp_path / "data", n_train=10)
    monkeypatch.setenv("CXRSEG_DATA__VAL_FRACTION", "0.5")
    assert CliRunner().invoke(app, tiny_args(dataset, tmp_path / "runs", epochs=1)).exit_code == 0
    checkpoint = run_dir(tmp_path / "runs") / "best.safetensors"
    weights, info = read_checkpoint(checkpoint)
    val = dataset_splits(dataset, 0.5)["val"]
    assert len(val) >= 2
    info.trained_on = info.trained_on | {film_key(val[0].name)}
    atomic_save(weights, checkpoint_metadata(info), tmp_path / "learnt.safetensors")
    args = ["evaluate", "--checkpoint", str(tmp_path / "learnt.safetensors"), "--data", str(dataset), "--split", "val"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_images"] == len(val) - 1
    assert f"films the checkpoint learnt: {val[0].name}" in " ".join(result.stderr.split())


def test_a_fine_tune_stopped_in_its_first_epoch_still_knows_what_its_start_learnt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped before its first checkpoint, the run's films learnt were read from a last.safetensors that did not
    exist yet: on resume, films its start had learnt were validated on again. The run writes them as it starts."""
    import cxrseg.training.loop as loop

    dataset = write_dataset(tmp_path / "data", n_train=20)
    monkeypatch.setenv("CXRSEG_DATA__SPLIT_RULE", "shuffle")
    monkeypatch.setenv("CXRSEG_DATA__VAL_FRACTION", "0.3")
    assert CliRunner().invoke(app, tiny_args(dataset, tmp_path / "first", epochs=1)).exit_code == 0
    start = run_dir(tmp_path / "first") / "best.safetensors"
    learnt = read_checkpoint(start)[1].trained_on
    monkeypatch.setenv("CXRSEG_DATA__SPLIT_SEED", "5")  # another split: some learnt films fall in `val`
    real, calls = loop.segmentation_loss, []

    def stopped(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C in the first epoch: the step ends, a state is saved, no checkpoint yet
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "segmentation_loss", stopped)
    args = ["train", "--data", str(dataset), "--runs-dir", str(tmp_path / "tune"), "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "4", "--init-from", str(start)])
    run = run_dir(tmp_path / "tune")
    assert (run / "state.safetensors").is_file() and not (run / "last.safetensors").exists(), result.output
    monkeypatch.setattr(loop, "segmentation_loss", real)
    start.unlink()  # the run needs nothing but itself
    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert "validation films moved to training" in " ".join(result.output.split())
    assert learnt <= read_checkpoint(run / "last.safetensors")[1].trained_on


def test_a_checkpoint_that_records_no_films_keeps_its_own_train_split_out_of_val(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints made before they recorded their films: on the folder they were trained in (by path), their own
    `train` split is what they learnt, and another split asked for must not validate on it."""
    dataset = write_dataset(tmp_path / "data", n_train=20)
    assert CliRunner().invoke(app, tiny_args(dataset, tmp_path / "first", epochs=1)).exit_code == 0
    weights, info = read_checkpoint(run_dir(tmp_path / "first") / "best.safetensors")
    learnt, info.trained_on = info.trained_on, frozenset()  # as written before
    atomic_save(weights, checkpoint_metadata(info), tmp_path / "old.safetensors")
    monkeypatch.setenv("CXRSEG_DATA__VAL_FRACTION", "0.5")
    args = ["train", "--data", str(dataset), "--runs-dir", str(tmp_path / "tune"), "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "4", "--init-from", str(tmp_path / "old.safetensors")])
    assert result.exit_code == 0, result.output
    assert "validation films moved to training" in " ".join(result.output.split())
    assert learnt <= read_checkpoint(run_dir(tmp_path / "tune") / "last.safetensors")[1].trained_on


def test_a_val_split_the_checkpoint_learnt_whole_is_named_not_scored(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data", n_train=10)
    assert CliRunner().invoke(app, tiny_args(dataset, tmp_path / "runs", epochs=1)).exit_code == 0
    weights, info = read_checkpoint(run_dir(tmp_path / "runs") / "best.safetensors")
    info.trained_on = frozenset(film_key(f"case_{i:03d}") for i in range(10))  # every film of image/
    atomic_save(weights, checkpoint_metadata(info), tmp_path / "all.safetensors")
    args = ["evaluate", "--checkpoint", str(tmp_path / "all.safetensors"), "--data", str(dataset), "--split", "val"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, DataError) and "every film of the val split was learnt" in str(result.exception)
    other = tmp_path / "other"  # a second folder whose `val` is unseen: scored, the first one's films named
    for folder in ("image", "mask"):
        (other / folder).mkdir(parents=True)
        for file in (dataset / folder).iterdir():
            shutil.copy(file, other / folder / f"new_{file.name}")
    result = CliRunner().invoke(app, [*args, "--data", str(other), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_images"] == len(dataset_splits(other)["val"])
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    tune = ["train", "--data", str(copy), "--runs-dir", str(tmp_path / "tune"), "--epochs", "1", "--batch-size", "4"]
    result = CliRunner().invoke(app, [*tune, "--init-from", str(tmp_path / "all.safetensors")])
    assert isinstance(result.exception, DataError)
    assert "moved from validation to training because the --init-from checkpoint" in " ".join(
        str(result.exception).split()
    )
