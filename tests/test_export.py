"""ONNX export and the ONNX Runtime backend: parity with torch, metadata round-trip, clear errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrseg.assets import BUNDLED_MODEL, SAMPLE_DIR
from cxrseg.checkpoint import load_checkpoint
from cxrseg.cli.app import app
from cxrseg.config import InferenceSettings
from cxrseg.errors import CheckpointError, ConfigError, DataError
from cxrseg.export.onnx import INT8_MIN_DICE
from cxrseg.inference import backend
from cxrseg.inference.backend import load_model
from cxrseg.inference.predict import PredictOptions, predict_paths
from cxrseg.runtime import OnnxModel, load_onnx

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model exported once per session by `cxrseg export` with no model flag (from an empty folder)."""
    folder = tmp_path_factory.mktemp("export")
    out = folder / "lung.onnx"
    result = CliRunner().invoke(app, ["export", "--out", str(out), "--runs-dir", str(folder / "no-runs")])
    assert result.exit_code == 0, result.output
    assert "largest probability difference" in result.output
    return out


def predict(out: Path, model: Path, backend: str) -> list[dict[str, str]]:
    cfg = InferenceSettings(device="cpu", backend=backend)
    result = predict_paths([SAMPLE_DIR / "image", SAMPLE_DIR / "test_image"], out, model, cfg, PredictOptions())
    assert result.failed == 0
    with result.csv_path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # exports the bundled model to ONNX
def test_onnx_runtime_masks_and_flags_match_torch(tmp_path: Path, exported: Path) -> None:
    torch_rows = predict(tmp_path / "torch", BUNDLED_MODEL, "torch")
    ort_rows = predict(tmp_path / "ort", exported, "auto")  # a .onnx file: auto means ONNX Runtime
    assert [r["mask"] for r in ort_rows] == [r["mask"] for r in torch_rows] and len(torch_rows) == 24
    equal = total = 0
    for row in torch_rows:
        a = np.asarray(Image.open(tmp_path / "torch" / row["mask"]))
        b = np.asarray(Image.open(tmp_path / "ort" / row["mask"]))
        equal, total = equal + int((a == b).sum()), total + a.size
    assert equal / total >= 0.9999
    assert [r["flags"] for r in ort_rows] == [r["flags"] for r in torch_rows]


@pytest.mark.slow  # exports the bundled model to ONNX
def test_metadata_round_trip(exported: Path) -> None:
    _, info = load_checkpoint(BUNDLED_MODEL)
    model = load_onnx(exported)
    assert model.info.settings == info.settings
    assert (model.info.epoch, model.info.metrics) == (info.epoch, info.metrics)
    assert model.metadata["precision"] == "fp32"
    assert float(model.metadata["threshold"]) == info.settings.inference.threshold
    assert json.loads(model.metadata["preprocessing"])["image_size"] == info.settings.preprocess.image_size


@pytest.mark.slow  # exports the bundled model to ONNX
def test_batch_dimension_is_dynamic(exported: Path) -> None:
    model = load_onnx(exported)
    size = model.image_size
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 1, size, size)).astype(np.float32)
        assert model.logits(x).shape == (batch, 1, size, size)


@pytest.mark.slow  # exports the bundled model to ONNX
def test_evaluate_accepts_an_onnx_file(exported: Path) -> None:
    runner = CliRunner()
    scores = {}
    for model in (BUNDLED_MODEL, exported):
        result = runner.invoke(
            app, ["evaluate", "--checkpoint", str(model), "--data", str(SAMPLE_DIR), "--device", "cpu", "--json"]
        )
        assert result.exit_code == 0, result.output
        scores[model.suffix] = json.loads(result.stdout[result.stdout.index("{") :])["dice"]
    assert scores[".onnx"] == pytest.approx(scores[".safetensors"], abs=1e-4)


@pytest.mark.slow  # exports the bundled model to ONNX
def test_a_checkpoint_runs_on_onnx_runtime_when_asked(exported: Path) -> None:
    model, info = load_model(BUNDLED_MODEL, InferenceSettings(device="cpu", backend="onnxruntime"))
    assert isinstance(model, OnnxModel) and info.settings == load_checkpoint(BUNDLED_MODEL)[1].settings
    x = np.zeros((2, 1, model.image_size, model.image_size), dtype=np.float32)
    np.testing.assert_allclose(model.logits(x), load_onnx(exported).logits(x), atol=1e-4)


def test_an_onnx_file_not_written_by_cxrseg_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "foreign",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 32, 32])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.onnx is an ONNX model but not a cxrseg checkpoint"):
        load_onnx(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=r"garbage\.onnx cannot be opened as an ONNX model"):
        load_onnx(garbage)


@pytest.mark.slow  # exports the bundled model to ONNX
def test_torch_backend_refuses_an_onnx_file(exported: Path) -> None:
    with pytest.raises(ConfigError, match="--backend onnxruntime or auto"):
        load_model(exported, InferenceSettings(backend="torch"))


@pytest.mark.slow  # exports the bundled model to ONNX
def test_missing_onnxruntime_says_how_to_install_it(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ConfigError, match=r'pip install "cxrseg\[onnx\]"'):
        load_onnx(exported)


@pytest.mark.slow
def test_int8_export_keeps_the_masks(tmp_path: Path) -> None:
    from cxrseg.export import export_onnx

    result = export_onnx(BUNDLED_MODEL, tmp_path / "int8.onnx", int8=True, calibration=SAMPLE_DIR)
    assert result.precision == "int8" and result.calibration_images == 20
    assert result.mask_agreement >= 0.999
    assert result.lung_dice >= INT8_MIN_DICE and result.held_out and result.validation_images == 4  # test_image/
    model = load_onnx(result.path)
    assert model.metadata["precision"] == "int8" and "20 images" in model.metadata["calibration"]


@pytest.mark.parametrize(("amx", "expected"), [(False, "onnxruntime"), (True, "torch")])
def test_auto_backend_takes_the_faster_runtime_of_the_cpu(monkeypatch: pytest.MonkeyPatch, amx: bool, expected: str):
    """Long CPU runs: ONNX Runtime fp32 where it measured faster, torch bf16 on CPUs with AMX; short runs torch."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(backend, "cpu_has_amx", lambda: amx)
    cfg = InferenceSettings(backend="auto", device="cpu")
    assert backend.choose_backend(BUNDLED_MODEL, cfg, backend.AUTO_ORT_MIN_IMAGES) == expected
    assert backend.choose_backend(BUNDLED_MODEL, cfg, backend.AUTO_ORT_MIN_IMAGES - 1) == "torch"
    assert backend.choose_backend(BUNDLED_MODEL, cfg.model_copy(update={"backend": "torch"}), 10**6) == "torch"


@pytest.mark.slow  # exports the bundled model to int8
def test_int8_export_calibrated_on_black_images_is_refused(tmp_path: Path) -> None:
    """An int8 model calibrated on flat black images was written with exit 0 although its lung
    masks reach a Dice of about 0.9 against torch's ("mask pixels equal 95.6 %" hid it: mostly background); it is
    now refused, nothing written, with a line saying to calibrate on real training X-rays."""
    from cxrseg.export import export_onnx

    black = tmp_path / "black"
    black.mkdir()
    for i in range(8):
        Image.new("L", (512, 512), 0).save(black / f"b{i}.png")
    out = tmp_path / "int8.onnx"
    with pytest.raises(
        DataError, match=r"Dice 0\.\d+ .*not written\. Calibrate on real training X-rays: --calibration"
    ):
        export_onnx(BUNDLED_MODEL, out, int8=True, calibration=black)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["black"]


def test_int8_checks_use_the_sample_x_rays_not_used_for_calibration() -> None:
    """With the default calibration (the sample's image/) 20 of the 24 check X-rays were the
    calibration images themselves; the check now takes the others (test_image/), and says when it cannot."""
    from cxrseg.export.calibration import calibration_images, sample_images
    from cxrseg.export.onnx import check_images

    default = calibration_images(None)
    checks, held_out = check_images(default)
    assert held_out and checks and not set(checks) & set(default)
    assert {path.parent.name for path in checks} == {"test_image"}
    assert check_images([]) == (sample_images(), True)
    assert check_images(sample_images()) == (sample_images(), False)


def test_mask_dice_sees_a_lost_lung_that_the_share_of_equal_pixels_hides() -> None:
    """The share of equal mask pixels is mostly background; the Dice of the masks is not."""
    from cxrseg.export.onnx import mask_dice

    torch_mask = np.zeros((2, 1, 64, 64), bool)
    torch_mask[:, :, 20:40, 10:30] = torch_mask[:, :, 20:40, 34:54] = True
    int8_mask = torch_mask.copy()
    int8_mask[0, :, :, 32:] = False  # one lung lost on one image
    assert np.mean(torch_mask == int8_mask) > 0.95
    assert mask_dice(torch_mask, int8_mask) == pytest.approx((2 * 400 / 1200 + 1) / 2)
    assert mask_dice(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool)) == 1.0


@pytest.fixture
def export_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run `cxrseg export ARGS` through the console entry point (typed errors become their line and exit code);
    returns (exit code, stdout and stderr)."""
    from cxrseg.cli import main

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["cxrseg", "export", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        return exited.value.code, " ".join((captured.out + captured.err).split())

    return run


@pytest.mark.parametrize("link", ["same", "dotted", "symlink", "hardlink"])
def test_export_never_overwrites_its_input_checkpoint(tmp_path: Path, link: str, export_cli) -> None:
    """`export --checkpoint X --out X` replaced the checkpoint with the ONNX model (weights lost).
    An --out that is the checkpoint by any spelling, symlink or hard link is now refused before the export."""
    import os
    import shutil

    checkpoint = tmp_path / "best.safetensors"
    shutil.copy(BUNDLED_MODEL, checkpoint)
    before = checkpoint.read_bytes()
    (tmp_path / "sub").mkdir()
    out = {
        "same": checkpoint,
        "dotted": tmp_path / "sub" / ".." / "best.safetensors",
        "symlink": tmp_path / "best.onnx",
        "hardlink": tmp_path / "best.onnx",
    }[link]
    if link == "symlink":
        out.symlink_to(checkpoint)
    elif link == "hardlink":
        os.link(checkpoint, out)
    code, output = export_cli("--checkpoint", str(checkpoint), "--out", str(out))
    assert code == 2, output
    assert checkpoint.read_bytes() == before
    if link in ("symlink", "hardlink"):
        assert "is the checkpoint" in output and "destroy the weights" in output


@pytest.mark.parametrize(
    ("make", "message"),
    [("folder", "is a folder; give a file name such as"), ("lung.bin", "give a name ending in .onnx")],
)
def test_export_checks_out_before_the_export(tmp_path: Path, make: str, message: str, export_cli) -> None:
    """An --out that is a folder or has no .onnx suffix was found out only after the ~20 s export
    (or not at all); it is now refused at once, with what to give instead."""
    import time

    out = tmp_path / make
    if make == "folder":
        out.mkdir()
    start = time.perf_counter()
    code, output = export_cli("--checkpoint", str(BUNDLED_MODEL), "--out", str(out))
    assert code == 2 and message in output, output
    assert time.perf_counter() - start < 5  # no export ran
    assert sorted(p.name for p in tmp_path.iterdir()) == (["folder"] if make == "folder" else [])


def test_a_bad_out_is_refused_before_a_checkpoint_is_chosen(
    tmp_path: Path, export_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --checkpoint the usage error comes first, not after a line naming the model it would have used."""
    monkeypatch.chdir(tmp_path)
    code, output = export_cli("--out", "lung.pt")
    assert code == 2 and "give a name ending in .onnx" in output, output
    assert "pretrained" not in output and "Using" not in output, output


def test_export_says_an_onnx_checkpoint_is_an_onnx_model(tmp_path: Path, export_cli) -> None:
    """`export --checkpoint x.onnx` said "truncated or corrupt"; it now says it is an ONNX model
    and export takes a .safetensors checkpoint, and export's --help no longer says it takes .onnx."""
    model = tmp_path / "lung.onnx"
    model.write_bytes(b"an onnx model")
    code, output = export_cli("--checkpoint", str(model), "--out", str(tmp_path / "again.onnx"))
    assert code == 2, output
    assert "is an ONNX model; export takes a .safetensors checkpoint" in output
    assert "corrupt" not in output and not (tmp_path / "again.onnx").exists()
    help_text = " ".join(CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "250"}).output.split())
    assert "Checkpoint to export (.safetensors; not an .onnx model)" in help_text
    assert ".safetensors or .onnx" not in help_text
