"""`cxrseg export`: a checkpoint to an ONNX model with its settings attached, optionally int8."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

from cxrseg.cli.common import (
    ConfigOption,
    RunsDirOption,
    chosen_checkpoint,
    console,
    flag_settings,
    require_paths,
    stdout,
)
from cxrseg.cli.options import option

CheckpointOption = Annotated[
    Path | None,
    option(
        help="Checkpoint to export (.safetensors; not an .onnx model).",
        default="the newest run's best, else the bundled model",
    ),
]


def export(
    ctx: typer.Context,
    out: Annotated[Path, option("--out", "-o", help="The .onnx file to write.")],
    checkpoint: CheckpointOption = None,
    export_format: Annotated[Literal["onnx"], option("--format", help="Only onnx for now.", default="onnx")] = "onnx",
    int8: Annotated[
        bool, option("--int8", help="Static int8 quantization (QDQ, per-channel).", default=False, flag=True)
    ] = False,
    calibration: Annotated[
        Path | None,
        option(
            help="int8 calibration images: a folder, or a dataset whose image/ is used.",
            default="the sample X-rays",
        ),
    ] = None,
    runs_dir: RunsDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch, settings in the metadata), checked against torch on real X-rays.

    An int8 model whose lung masks differ from torch's (mean Dice below 0.98 on sample X-rays it was not calibrated
    on) is not written.
    """
    from cxrseg.export import export_onnx
    from cxrseg.export.onnx import check_out, check_paths

    if calibration is not None and not int8:
        raise typer.BadParameter("calibration images are used only with --int8", param_hint="--calibration")
    require_paths(checkpoint, "--checkpoint", "pass a .safetensors checkpoint")
    require_paths(calibration, "--calibration", "pass a folder of X-rays or a dataset folder")
    check_out(out)  # before a checkpoint is chosen and named
    settings = flag_settings(ctx, {"train": {"runs_dir": runs_dir}}, config)
    checkpoint = chosen_checkpoint(checkpoint, settings.train.runs_dir)
    check_paths(checkpoint, out)  # before the export's 20 s, not after
    with console.status(f"Exporting {escape(str(checkpoint))} to {export_format}{' int8' if int8 else ''}"):
        result = export_onnx(checkpoint, out, int8=int8, calibration=calibration)
    calibrated = f", calibrated on {result.calibration_images} images" if int8 else ""
    held_out = " not used for calibration" if int8 and result.held_out else ""
    stdout.print(
        f"Wrote {escape(str(result.path))} ({result.precision}, {result.size_bytes / 1e6:.1f} MB{calibrated}) "
        f"in {result.seconds:.0f} s. Against torch on {result.validation_images} sample X-rays{held_out}: lung "
        f"Dice {result.lung_dice:.4f}, largest probability difference {result.max_abs_diff:.2g}, mask pixels equal "
        f"{100 * result.mask_agreement:.3f} %.",
        highlight=False,
        soft_wrap=True,
    )
