"""The CLI as a new user meets it: help text, flags, --config, exit codes, wording, log output, the model choice."""

from __future__ import annotations

import io
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer.main
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

import cxrseg.cli.train as train_cli
from cxrseg.assets import BUNDLED_MODEL, SAMPLE_DIR
from cxrseg.checkpoint import checkpoint_metrics
from cxrseg.cli.app import app, main
from cxrseg.cli.options import setting_default
from cxrseg.training.loop import EpochReport
from tests.conftest import TINY_MODEL, write_dataset

COMMANDS = ["download", "train", "evaluate", "predict", "export"]
WIDE = {"COLUMNS": "400", "NO_COLOR": "1"}
RAW_BRACKET = re.compile(r"(?<!\\)\[(?!/?dim\])")  # a "[" rich would read as markup


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`cxrseg ARGS` through the console entry point, which maps typed errors to exit codes."""
    monkeypatch.setattr(sys, "argv", ["cxrseg", *args])
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def help_of(runner: CliRunner, command: str | None) -> str:
    result = runner.invoke(app, [command, "--help"] if command else ["--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def option_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^│ +--", line)]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding runs/<run>/best.safetensors of a tiny U-Net trained on the packaged sample."""
    home = tmp_path_factory.mktemp("home")
    args = ["train", "--data", str(SAMPLE_DIR), "--epochs", "1", "--runs-dir", str(home / "runs"), *TINY_MODEL]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return home


def test_help_keeps_brackets_and_every_help_string_is_escaped(runner: CliRunner) -> None:
    assert "[test_image/ test_mask/ are never read]" in help_of(runner, "train")
    assert "image/ mask/ [test_image/ test_mask/]" in help_of(runner, "evaluate")
    assert "<name>.overlay.jpg" in help_of(runner, "predict")
    group = typer.main.get_command(app)
    for name in COMMANDS:
        command = group.commands[name]
        assert not RAW_BRACKET.search(command.help or ""), name
        for param in command.params:
            assert not RAW_BRACKET.search(getattr(param, "help", None) or ""), (name, param.name)


def test_every_option_shows_its_default_from_settings(runner: CliRunner) -> None:
    for name in [None, *COMMANDS]:
        for line in option_lines(help_of(runner, name)):
            if not re.match(r"^│ +--(help|version) ", line):
                assert "[default: " in line or "[required]" in line, (name, line)
    train = help_of(runner, "train")
    assert f"[default: {setting_default('train.epochs')}]" in train
    assert f"[default: {setting_default('train.batch_size')}]" in train
    assert f"[default: {setting_default('preprocess.image_size')}]" in train
    assert "[default: data/chest-segmentation-image]" in train
    assert f"[default: {setting_default('inference.threshold')}]" in help_of(runner, "predict")


def test_flags_are_shown_as_flags_and_refuse_a_value(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for name in [None, *COMMANDS]:
        assert "<bool>" not in help_of(runner, name), name
    line = next(line for line in option_lines(help_of(runner, "train")) if "--deterministic" in line)
    assert "--no-deterministic" in line and "[default: no-deterministic]" in line
    code, _, err = run_main(["train", "--deterministic", "true"], monkeypatch, capsys)
    assert code == 2 and "on/off flag takes no value" in err and "--no-deterministic" in err
    code, _, err = run_main(["predict", "--sample", "yes", "--out", "x"], monkeypatch, capsys)
    assert code == 2 and "--sample" in err and "on/off flag" in err


def test_train_options_are_grouped_and_commands_in_workflow_order(runner: CliRunner) -> None:
    train = help_of(runner, "train")
    panels = re.findall(r"╭─ ([A-Za-z ]+?) ─", train)
    assert panels == ["Options", "Data", "Model", "Optimisation", "Run control", "Output"]
    listed = re.findall(r"^│ (\w+) ", help_of(runner, None).split("Commands")[1], flags=re.MULTILINE)
    assert listed == COMMANDS


def test_precision_is_type_checked_and_version_has_help(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert "<auto|bf16|fp16|fp32>" in help_of(runner, "train")
    code, _, err = run_main(["train", "--precision", "bf32"], monkeypatch, capsys)
    assert code == 2 and "bf32" in err and "fp16" in err
    version = next(line for line in option_lines(help_of(runner, None)) if "--version" in line)
    assert "Print the cxrseg version" in version


def test_config_before_or_after_the_command_with_the_same_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text('[data]\nroot = "from-file"\n')
    for args in (["--config", str(config), "train"], ["train", "--config", str(config)]):
        code, _, err = run_main(args, monkeypatch, capsys)
        assert code == 1 and "from-file not found" in err, (args, err)
        monkeypatch.setenv("CXRSEG_DATA__ROOT", "from-env")  # env over file
        code, _, err = run_main(args, monkeypatch, capsys)
        assert code == 1 and "from-env not found" in err and "from-file" not in err, (args, err)
        monkeypatch.delenv("CXRSEG_DATA__ROOT")
    other = tmp_path / "d.toml"
    other.write_text("")
    code, _, err = run_main(["--config", str(config), "train", "--config", str(other)], monkeypatch, capsys)
    assert code == 2 and "given twice" in err


def test_settings_errors_speak_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[train]\nbatchsize = 3\n")
    code, _, err = run_main(["train", "--config", str(config)], monkeypatch, capsys)
    assert code == 2 and "unknown setting train.batchsize; did you mean batch_size?" in err
    assert "Extra inputs" not in err
    code, _, err = run_main(["train", "--data", str(SAMPLE_DIR), "--image-size", "100"], monkeypatch, capsys)
    assert code == 2 and "preprocess.image_size: must be a multiple of 16" in err and "Value error" not in err


def test_usage_errors_exit_2_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import cxrseg.inference.backend
    import cxrseg.inference.engine

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the usage error")

    monkeypatch.setattr(cxrseg.inference.engine, "load_model", refuse)
    monkeypatch.setattr(cxrseg.inference.backend, "load_model", refuse)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(src / "a.png")
    cases = [
        (["predict", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")], "nope.png: no such file"),
        (["predict", str(tmp_path / "*.dcm"), "--out", str(tmp_path / "o")], "no file matches"),
        (["predict", str(src), "--out", str(src)], "is the input folder"),
        (["predict", str(src), "--out", str(tmp_path / "o"), "--checkpoint", "no.safetensors"], "--checkpoint no"),
        (["evaluate", "--data", str(tmp_path / "nodata")], "--data"),
    ]
    for args, words in cases:
        code, out, err = run_main(args, monkeypatch, capsys)
        assert code == 2 and words in err, (args, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err  # one line, no bar
        assert not out


def test_a_missing_resume_folder_or_archive_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Catches --resume and --archive paths that do not exist reported as exit code 1 (a failed run) instead of
    2, the README's code for a path given on the command line that does not exist."""
    cases = [
        (["train", "--resume", str(tmp_path / "no-run")], "--resume"),
        (["download", "--archive", str(tmp_path / "no.zip"), "--dest", str(tmp_path / "data")], "--archive"),
    ]
    for args, words in cases:
        code, out, err = run_main(args, monkeypatch, capsys)
        assert code == 2 and words in err and "no such file or folder" in err, (args, code, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert not out
    assert not (tmp_path / "data").exists()


def test_messages_never_start_with_a_blank_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    runs = tmp_path / "runs"
    data = write_dataset(tmp_path / "data")
    for args in (
        ["train", "--data", str(data), "--runs-dir", str(runs), "--epochs", "1", *TINY_MODEL],
        ["evaluate", "--data", str(data), "--runs-dir", str(runs)],
        ["train", "--data", str(tmp_path / "missing")],
        ["train", "--bogus"],
    ):
        code, out, err = run_main(args, monkeypatch, capsys)
        for stream in (out, err):
            assert not stream or stream.splitlines()[0].strip(), (args, stream[:200])


def test_log_output_is_one_plain_line_per_epoch(runner: CliRunner, tmp_path: Path) -> None:
    runs = tmp_path / ("a-long-folder-name-so-the-path-passes-eighty-columns" * 2) / "runs"
    args = ["train", "--data", str(SAMPLE_DIR), "--epochs", "2", "--runs-dir", str(runs), *TINY_MODEL]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2 and epochs[0].startswith("epoch 1/2  train loss ") and "val Dice" in epochs[1]
    assert sum("train loss" in line for line in lines) == 2  # no header lines
    assert "━" not in result.stderr  # no progress frame left in the log
    (run,) = runs.iterdir()
    assert any(str(run) in line for line in lines)  # the run folder on one line, not wrapped at 80 columns


def test_terminal_keeps_the_epoch_table(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    monkeypatch.setattr(train_cli, "console", screen)
    view = train_cli._TrainView(Progress(console=screen))
    report = EpochReport(
        **dict.fromkeys(EpochReport.__dataclass_fields__, 0)
        | {"epoch": 1, "epochs": 3, "val_dice": 0.5, "best_dice": 0.5, "is_best": True}
    )
    view.on_epoch(report)
    text = screen.file.getvalue()
    assert re.search(r"epoch +train loss +val Dice", text) and "1/3" in text and "0.5000 *" in text


def test_a_run_replacing_the_bundled_model_is_announced(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(trained_run)
    src = tmp_path / "in"
    src.mkdir()
    Image.open(next((SAMPLE_DIR / "image").glob("*.png"))).save(src / "a.png")
    code, _, err = run_main(["predict", str(src), "--out", str(tmp_path / "out")], monkeypatch, capsys)
    assert code == 0, err
    run_dice = checkpoint_metrics(next(trained_run.glob("runs/*/best.safetensors")))["val_dice"]
    bundled_dice = checkpoint_metrics(BUNDLED_MODEL)["val_dice"]
    line = next(line for line in err.splitlines() if "newest run" in line)
    assert f"validation Dice {run_dice:.4f}" in line and f"bundled model's {bundled_dice:.4f}" in line
    assert "validation split" in line and "--checkpoint" in line

    code, _, err = run_main(["evaluate", "--data", str(SAMPLE_DIR), "--json"], monkeypatch, capsys)
    assert code == 0 and f"bundled model's {bundled_dice:.4f}" in err


def test_predictions_folder_is_ignored_by_git() -> None:
    ignored = (Path(__file__).parents[1] / ".gitignore").read_text().splitlines()
    assert "predictions/" in ignored


def test_the_command_line_lets_idle_threads_sleep_unless_told_otherwise(tmp_path: Path) -> None:
    """OMP_WAIT_POLICY must be set before torch loads, so the entry point sets it; a user's own value wins."""
    code = (
        "import os, sys\n"
        "sys.argv = ['cxrseg', '--help']\n"
        "from cxrseg.cli import main\n"
        "assert 'torch' not in sys.modules, 'torch loaded before the thread policy is set'\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('policy=' + os.environ.get('OMP_WAIT_POLICY', ''))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert plain.stdout.strip().endswith("policy=PASSIVE")
    policy = env | {"OMP_WAIT_POLICY": "ACTIVE"}
    mine = subprocess.run([sys.executable, "-c", code], env=policy, capture_output=True, text=True, check=True)
    assert mine.stdout.strip().endswith("policy=ACTIVE")


FAULTS = """
import resource, sys
import cxrseg
if sys.argv[1] == "tuned":
    assert cxrseg.keep_freed_memory()
import torch
for warm in range(10):  # the heap settles after a few rounds
    torch.ones(16 << 20).sum()  # a 64 MB block, like a batch of activations
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.ones(16 << 20).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    """Four 64 MB allocations: glibc maps and zeroes each afresh (16k page faults each) unless told to keep them."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_")}

    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", FAULTS, mode], env=env, capture_output=True, text=True, check=True)
        return int(done.stdout.strip())

    assert faults("plain") > 4 * 10_000
    # the fewest of three runs: one run of a full test session once faulted 3 of its 4 blocks in (49,152),
    # never seen again in 40 runs alone; without the setting every run faults all four
    assert min(faults("tuned") for _ in range(3)) < 2_000


def test_a_resumed_run_says_what_it_does_not_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A resumed run keeps its settings.json: a config file is refused and CXRSEG_* variables are named as unused,
    never passed over in silence (the run would end at its old epoch count while asked for more)."""
    import types

    from cxrseg.config import Settings
    from cxrseg.training import loop

    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text(Settings.model_validate({"data": {"root": str(tmp_path)}}).model_dump_json())
    seen = []

    def fake_train(settings: Settings, view: object, resume_dir: Path, ctx: object) -> object:
        seen.append(settings)
        return types.SimpleNamespace(stop_reason="completed", best_dice=0.0, best_epoch=0, run_dir=resume_dir)

    monkeypatch.setattr(loop, "train", fake_train)
    config = tmp_path / "c.toml"
    config.write_text("[train]\nepochs = 9\n")
    for args in (
        ["--config", str(config), "train", "--resume", str(run)],
        ["train", "--resume", str(run), "--config", str(config)],
    ):
        code, _, err = run_main(args, monkeypatch, capsys)
        assert code == 2 and "not from a config file" in err and not seen, err
    monkeypatch.setenv("CXRSEG_TRAIN__EPOCHS", "9")
    code, _, err = run_main(["train", "--resume", str(run), "--epochs", "5"], monkeypatch, capsys)
    assert code == 0 and "CXRSEG_TRAIN__EPOCHS not applied" in err, err
    assert seen[-1].train.epochs == 5


@pytest.mark.parametrize(
    ("names", "line"),
    [
        (["notes.txt"], "Ignored 1 file that is not an X-ray: "),
        (["notes.txt", "list.csv"], "Ignored 2 files that are not X-rays: "),
    ],
)
def test_the_files_predict_ignores_are_counted_in_plain_words(
    names: list[str], line: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cxrseg.cli.predict import _summarize
    from cxrseg.inference.predict import PredictResult

    row = {"status": "ok", "flags": "", "message": ""}
    _summarize(PredictResult([row], tmp_path / "predictions.csv", None, [tmp_path / name for name in names]))
    err = capsys.readouterr().err
    assert line in err and "1 ok, 0 failed" in err


def test_train_and_evaluate_take_the_shipped_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import json

    runs = tmp_path / "runs"
    args = ["train", "--sample", "--runs-dir", str(runs), "--epochs", "1", *TINY_MODEL]
    code, _, err = run_main(args, monkeypatch, capsys)
    assert code == 0, err
    [run] = list(runs.iterdir())
    assert json.loads((run / "settings.json").read_text())["data"]["root"] == [str(SAMPLE_DIR)]

    code, out, err = run_main(
        ["evaluate", "--sample", "--json", "--checkpoint", str(BUNDLED_MODEL)], monkeypatch, capsys
    )
    assert code == 0, err
    scores = json.loads(out)
    assert scores["split"] == "test" and scores["n_images"] == 4 and scores["dice"] > 0.9  # the bundled model

    code, _, err = run_main(["evaluate", "--sample", "--data", str(SAMPLE_DIR)], monkeypatch, capsys)
    assert code == 2 and "--data or --sample" in err
