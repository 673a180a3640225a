"""After training: the best checkpoint's validation predictions as overlays, error maps and a review report."""

from __future__ import annotations

from pathlib import Path

from cxrseg.checkpoint import load_checkpoint
from cxrseg.config import Settings
from cxrseg.inference.evaluate import evaluate_model
from cxrseg.report import ErrorMaps, write_evaluate_report
from cxrseg.training.data import split_folders

FOLDER = "saved_images"


def save_validation_images(run_dir: Path, settings: Settings) -> Path:
    """Score run_dir/best.safetensors on its validation split and write, per image, NAME.overlay.png and
    NAME.error.png into run_dir/saved_images/, plus saved_images/report.html (worst Dice first).

    The split rule and preprocessing are the checkpoint's own; `settings.inference` sets the device and
    post-processing, as for `cxrseg evaluate`. Returns the report's path.
    """
    model, info = load_checkpoint(run_dir / "best.safetensors")
    pairs = [pair for _, pair in split_folders(info.settings, info.trained_on)[1]]
    folder = run_dir / FOLDER
    report = folder / "report.html"
    maps = ErrorMaps(report, pictures=folder, overlays=True)
    evaluation = evaluate_model(model, info.settings, pairs, settings.inference, on_image=maps)
    title = f"{run_dir.name}: {len(pairs)} validation images, best checkpoint (epoch {info.epoch})"
    return write_evaluate_report(report, maps.records, evaluation.summary, title)
