"""End to end through the `cxrseg` command: train -> evaluate on the packaged sample, errors, download."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrseg.assets import SAMPLE_DIR
from cxrseg.cli.app import app
from tests.test_download import Server, dataset_files, zip_bytes

TINY = ["--image-size", "64", "--base-channels", "4", "--depth", "2", "--batch-size", "8"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.slow
def test_train_then_evaluate_on_the_packaged_sample(runner: CliRunner, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", "--data", str(SAMPLE_DIR), "--epochs", "2", "--runs-dir", str(runs), *TINY])
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    for name in ("best.safetensors", "last.safetensors", "state.safetensors", "settings.json", "environment.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert json.loads((run / "settings.json").read_text())["preprocess"]["image_size"] == 64
    assert (run / "previews" / "epoch_002.png").is_file()

    csv = tmp_path / "scores.csv"
    result = runner.invoke(
        app, ["evaluate", "--data", str(SAMPLE_DIR), "--runs-dir", str(runs), "--json", "--csv", str(csv)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_images"] == 4 and 0 <= report["dice"] <= 1 and "hd95" in report and "iou" in report
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("name,image,dice") and len(rows) == 5

    result = runner.invoke(app, ["evaluate", "--data", str(SAMPLE_DIR), "--runs-dir", str(runs), "--split", "all"])
    assert result.exit_code == 0 and "24 images" in result.stdout


@pytest.mark.slow
def test_errors_are_one_red_line_without_traceback(tmp_path: Path) -> None:
    """A typed path that does not exist is wrong usage (2); a folder that exists but is unusable is an error (1)."""
    result = subprocess.run(
        [sys.executable, "-m", "cxrseg", "train", "--data", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert f"--data {tmp_path / 'missing'}: no such file or folder" in result.stderr

    (tmp_path / "empty").mkdir()
    empty = subprocess.run(
        [sys.executable, "-m", "cxrseg", "train", "--data", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert empty.returncode == 1 and "Traceback" not in empty.stderr and "empty" in empty.stderr

    debug = subprocess.run(
        [sys.executable, "-m", "cxrseg", "--debug", "train", "--data", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_file_as_runs_folder_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    result = subprocess.run(
        [sys.executable, "-m", "cxrseg", "train", "--data", str(SAMPLE_DIR), "--runs-dir", "afile", *TINY],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: cannot write afile: Not a directory (ENOTDIR); choose another output path."]


@pytest.mark.parametrize(
    "argv",
    [["train", "--no-such-flag"], ["no-such-command"], ["evaluate", "--split", "sideways"], ["train", "--epochs", "x"]],
)
def test_usage_errors_exit_2(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from cxrseg.cli import main

    monkeypatch.setattr(sys, "argv", ["cxrseg", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert "Usage" in capsys.readouterr().err


def test_bad_flag_value_names_the_setting(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", str(SAMPLE_DIR), "--image-size", "100"])
    assert result.exit_code != 0
    assert "multiple of 16" in str(result.exception) or "multiple of 16" in result.output


@pytest.mark.slow
def test_download_then_train_finds_the_data(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server()
    try:
        url = server.serve("/x.zip", zip_bytes(dataset_files(), prefix="chest-segmentation/"))
        monkeypatch.chdir(tmp_path)
        result = runner.invoke(app, ["download", "--url", url])
        assert result.exit_code == 0, result.output
        again = runner.invoke(app, ["download", "--url", url])
        assert "already present" in again.output and len(server.requests) == 1
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    result = runner.invoke(
        app,
        ["train", "--epochs", "1", "--image-size", "32", "--base-channels", "4", "--depth", "2", "--batch-size", "2"],
    )
    assert result.exit_code == 0, result.output
    assert next((tmp_path / "runs").glob("*/best.safetensors")).is_file()


def test_version(runner: CliRunner) -> None:
    from cxrseg import __version__

    assert __version__ in runner.invoke(app, ["--version"]).stdout


def test_sample_ships_with_licence() -> None:
    assert "CC BY-NC-SA 4.0" in (SAMPLE_DIR / "README.md").read_text()
    folders = ("image", "mask", "test_image", "test_mask")
    counts = {name: len(list((SAMPLE_DIR / name).glob("*.png"))) for name in folders}
    assert counts == {"image": 20, "mask": 20, "test_image": 4, "test_mask": 4}


def test_evaluate_spacing_reports_surface_distances_in_mm(runner: CliRunner) -> None:
    from cxrseg.assets import BUNDLED_MODEL, SAMPLE_DIR

    def scores(*extra: str) -> dict:
        args = ["evaluate", "--checkpoint", str(BUNDLED_MODEL), "--data", str(SAMPLE_DIR), "--split", "test"]
        result = runner.invoke(app, [*args, "--json", "--device", "cpu", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout[result.stdout.index("{") :])

    px, mm = scores(), scores("--spacing", "0.5")
    assert px["distance_unit"] == "px" and mm["distance_unit"] == "mm"
    assert mm["hd95"] == pytest.approx(0.5 * px["hd95"]) and mm["assd"] == pytest.approx(0.5 * px["assd"])
    assert mm["dice"] == px["dice"]
    bad = runner.invoke(
        app, ["evaluate", "--checkpoint", str(BUNDLED_MODEL), "--data", str(SAMPLE_DIR), "--spacing", "x"]
    )
    assert bad.exit_code == 2
