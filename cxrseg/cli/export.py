"""`cxrseg export`: a checkpoint to an ONNX model with its settings attached, optionally int8."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

from cxrseg.cli.common import console, flag_settings, stdout


def export(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint; default: newest run's best, else bundled.")
    ] = None,
    export_format: Annotated[Literal["onnx"], typer.Option("--format", help="Only onnx for now.")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="Static int8 quantization (QDQ, per-channel).")] = False,
    calibration: Annotated[
        Path | None,
        typer.Option(help="int8 calibration images: a folder, or a dataset whose image/ is used (default: sample)."),
    ] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Where to look for the newest run's checkpoint.")] = None,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch, settings in the metadata), checked against torch on real X-rays."""
    from cxrseg.checkpoint import default_checkpoint
    from cxrseg.export import export_onnx

    if calibration is not None and not int8:
        raise typer.BadParameter("calibration images are used only with --int8", param_hint="--calibration")
    settings = flag_settings(ctx, {"train": {"runs_dir": runs_dir}})
    if checkpoint is None:
        checkpoint, why = default_checkpoint(settings.train.runs_dir)
        console.print(why, markup=False, highlight=False)
    with console.status(f"Exporting {escape(str(checkpoint))} to {export_format}{' int8' if int8 else ''}"):
        result = export_onnx(checkpoint, out, int8=int8, calibration=calibration)
    calibrated = f", calibrated on {result.calibration_images} images" if int8 else ""
    stdout.print(
        f"Wrote {escape(str(result.path))} ({result.precision}, {result.size_bytes / 1e6:.1f} MB{calibrated}) "
        f"in {result.seconds:.0f} s. Against torch on {result.validation_images} sample X-rays: largest probability "
        f"difference {result.max_abs_diff:.2g}, mask pixels equal {100 * result.mask_agreement:.3f} %.",
        highlight=False,
        soft_wrap=True,
    )
