"""`cxrseg predict --report` and `cxrseg evaluate --report` end to end with the bundled model on real X-rays."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrseg.assets import SAMPLE_DIR
from cxrseg.cli.app import app
from cxrseg.dataset import dataset_splits
from tests.conftest import tiny_args

BUNDLED = SAMPLE_DIR.parent / "lung-unet.safetensors"


def test_predict_report_covers_every_input(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted((SAMPLE_DIR / "test_image").iterdir())[:3]:
        shutil.copy(path, inputs / path.name)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    args = ["predict", str(inputs), "--out", str(out), "--checkpoint", str(BUNDLED), "--report"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output  # one input failed; the report is still written
    html = (out / "report.html").read_text(encoding="utf-8")
    assert re.search(r'id="count-ok">3<', html) and re.search(r'id="count-error">1<', html)
    assert html.count('<figure class="card') == 4 and "broken.png" in html
    assert len(list((out / "report_files" / "thumbs").glob("*.jpg"))) == 3


def test_evaluate_report_matches_the_per_image_scores(tmp_path: Path) -> None:
    report, scores = tmp_path / "eval" / "review.html", tmp_path / "scores.csv"
    args = ["evaluate", "--data", str(SAMPLE_DIR), "--checkpoint", str(BUNDLED), "--split", "test"]
    result = CliRunner().invoke(app, [*args, "--csv", str(scores), "--report", str(report)])
    assert result.exit_code == 0, result.output
    with scores.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    html = report.read_text(encoding="utf-8")
    shown = re.findall(r'<span class="name" title="[^"]*">([^<]+)</span>', html)
    assert shown == [r["name"] for r in sorted(rows, key=lambda r: (float(r["dice"]), r["name"]))]  # worst first
    maps = sorted(p.name for p in (tmp_path / "eval" / "review_files" / "maps").iterdir())
    assert maps == sorted(f"{r['name']}.error.png" for r in rows)
    assert f"{min(float(r['dice']) for r in rows):.4f}" in html


@pytest.mark.slow
def test_train_save_images_writes_the_best_checkpoints_validation_pictures(tmp_path: Path, dataset: Path) -> None:
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, [*tiny_args(dataset, runs, epochs=2), "--save-images"])
    assert result.exit_code == 0, result.output
    [run] = list(runs.iterdir())
    saved = run / "saved_images"
    # validation is the seeded split carved from image/, never test_image/
    names = sorted(pair.image.name for pair in dataset_splits(dataset, 0.1, 0)["val"])
    assert sorted(p.name for p in saved.glob("*.overlay.png")) == [f"{Path(n).stem}.overlay.png" for n in names]
    assert sorted(p.name for p in saved.glob("*.error.png")) == [f"{Path(n).stem}.error.png" for n in names]
    html = (saved / "report.html").read_text(encoding="utf-8")
    assert html.count('<figure class="card') == len(names)
    best = max(json.loads(line)["val_dice"] for line in (run / "metrics.jsonl").read_text().splitlines())
    dice_row = re.search(r"<th scope=\"row\">dice</th><td>([0-9.]+)</td>", html)
    assert dice_row and dice_row.group(1) == f"{best:.4f}"  # the same images and scores as validation


def test_reports_and_tables_of_a_name_that_is_not_utf8_are_written(tmp_path: Path) -> None:
    """`predict --report`, `evaluate --report` and `evaluate --csv` crashed with UnicodeEncodeError
    after all the work on an X-ray whose file name is not valid UTF-8; each now writes its file and exits 0."""
    import os

    name = os.fsdecode(b"case\xff.png")
    data = tmp_path / "data"
    for folder in ("test_image", "test_mask"):
        (data / folder).mkdir(parents=True)
        shutil.copy(SAMPLE_DIR / folder / "CHNCXR_0228_0.png", data / folder / name)
    out = tmp_path / "out"
    args = ["predict", str(data / "test_image"), "--out", str(out), "--checkpoint", str(BUNDLED), "--report"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "case\\xff.png" in (out / "report.html").read_text(encoding="utf-8")
    report, scores = tmp_path / "eval" / "review.html", tmp_path / "scores.csv"
    args = ["evaluate", "--data", str(data), "--checkpoint", str(BUNDLED), "--split", "test"]
    result = CliRunner().invoke(app, [*args, "--csv", str(scores), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "case\\xff.png" in report.read_text(encoding="utf-8")
    assert "case\\xff.png" in scores.read_text(encoding="utf-8")
