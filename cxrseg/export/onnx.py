"""`export_onnx`: a checkpoint to a self-describing ONNX model (dynamic batch, optional int8), validated."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrseg.checkpoint import CheckpointInfo, checkpoint_metadata, load_checkpoint
from cxrseg.errors import CheckpointError, DataError, InputPathError
from cxrseg.export.calibration import CalibrationReader, calibration_images, model_inputs, sample_images
from cxrseg.files import atomic_path
from cxrseg.model import UNet
from cxrseg.preprocess import normalize
from cxrseg.runtime import INPUT_NAME, describe_preprocessing, load_onnx, require, to_onnx_proto

FP32_TOLERANCE = 1e-3  # largest probability difference an fp32 export may show against torch
# Lowest mean lung Dice of int8 masks against torch's on the check X-rays. The bundled model calibrated as by
# default (the sample's image/) gives 0.9986 on the 4 X-rays of test_image/ (0.9969-0.9993 per image over all 24
# sample X-rays); calibrated on 8 flat black images, 0.905 (0.84-0.95 per image) although 95.6 % of its mask
# pixels equal torch's (AMD EPYC, onnxruntime 1.32). 0.98 leaves a good calibration 10x its own
# distance from 1 and is far above a broken one.
INT8_MIN_DICE = 0.98


@dataclass
class ExportResult:
    """What export_onnx wrote and how closely ONNX Runtime reproduces the torch model on real X-rays."""

    path: Path
    precision: str  # "fp32" or "int8"
    max_abs_diff: float  # largest |p_onnx - p_torch| over all pixels of the validation images
    mask_agreement: float  # share of pixels whose thresholded mask is the same in both
    validation_images: int
    calibration_images: int
    size_bytes: int
    seconds: float
    lung_dice: float = 1.0  # mean Dice of the thresholded lung masks against torch's over the validation images
    held_out: bool = True  # whether the validation images exclude every calibration image


def _attach(proto, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "cxrseg"
    proto.doc_string = "cxrseg lung U-Net; settings and preprocessing in metadata_props"


def _quantize(proto, paths: list[Path], size: int, work: Path, trim: bool):
    """Static QDQ quantization: uint8 activations calibrated on `paths`, int8 per-channel weights in 7 bits.

    The 7-bit range keeps the file right on every x86 CPU: without VNNI (AVX2 only, as on many laptops) ONNX
    Runtime's uint8 x int8 kernel can saturate its 16-bit sums, which cost the bundled model 2 % of its mask
    pixels on an AMD EPYC (Zen 3) at the full 8 bits; with 7 bits 99.96 % agree with torch there.
    """
    onnx = require("onnx", "ONNX export")
    quantization = require("onnxruntime.quantization", "ONNX Runtime quantization")
    fp32, prepared, int8 = work / "fp32.onnx", work / "prepared.onnx", work / "int8.onnx"
    onnx.save(proto, fp32)
    quantization.shape_inference.quant_pre_process(str(fp32), str(prepared))
    quantization.quantize_static(
        str(prepared),
        str(int8),
        CalibrationReader(paths, size, INPUT_NAME, trim=trim),
        quant_format=quantization.QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
        calibrate_method=quantization.CalibrationMethod.MinMax,
    )
    return onnx.load(int8)


def validate(model: UNet, onnx_path: Path, paths: list[Path], threshold: float) -> tuple[float, float, float]:
    """(largest probability difference, share of equal mask pixels, mean lung Dice of the masks) of ONNX Runtime
    against torch fp32. The share of pixels is mostly background; the Dice sees a lung that is lost or grown."""
    onnx_model = load_onnx(onnx_path)
    images, valid = model_inputs(paths, onnx_model.image_size, onnx_model.info.settings.preprocess.trim_border)
    x = normalize(images, valid)
    with torch.no_grad():
        expected = (torch.sigmoid(model(x)) * valid).numpy()
    got = onnx_model.probabilities(x.numpy()) * valid.numpy()
    want, have = expected > threshold, got > threshold
    agreement = float(np.mean(want == have))
    return float(np.abs(expected - got).max()), agreement, mask_dice(want, have)


def mask_dice(expected: np.ndarray, got: np.ndarray) -> float:
    """Mean Dice over the images (axis 0) of two boolean mask stacks; two empty masks agree (1.0)."""
    axes = tuple(range(1, expected.ndim))
    both = np.logical_and(expected, got).sum(axis=axes)
    total = expected.sum(axis=axes) + got.sum(axis=axes)
    return float(np.mean(np.where(total > 0, 2 * both / np.maximum(total, 1), 1.0)))


def check_out(out_path: Path) -> None:
    """Refuse an --out that cannot take the ONNX model: a folder, a name not ending in .onnx, a path below a file."""
    if out_path.is_dir():
        raise InputPathError(f"--out {out_path} is a folder; give a file name such as {out_path / 'lung.onnx'}.")
    if out_path.suffix.lower() != ".onnx":
        raise InputPathError(
            f"--out {out_path}: the ONNX model is written to a .onnx file; give a name ending in .onnx, "
            f"e.g. {out_path.with_name(out_path.name + '.onnx')}."
        )
    for parent in out_path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputPathError(f"--out {out_path}: {parent} is a file, not a folder; give another --out.")
            break


def check_paths(checkpoint_path: Path, out_path: Path) -> None:
    """Refuse, before any work, an export that cannot be written or would destroy its input (InputPathError).

    The checkpoint must be a .safetensors file, not an ONNX model; --out a .onnx file name (not a folder, not
    below a file), never the checkpoint itself by any spelling, symlink or hard link.
    """
    if checkpoint_path.suffix.lower() == ".onnx":
        raise InputPathError(
            f"--checkpoint {checkpoint_path} is an ONNX model; export takes a .safetensors checkpoint "
            "(the one this model was exported from, or a run's best.safetensors)."
        )
    check_out(out_path)
    if _same_file(checkpoint_path, out_path):
        raise InputPathError(
            f"--out {out_path} is the checkpoint {checkpoint_path}; writing it would destroy the weights. "
            "Give another --out."
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.absolute() == b.absolute()


def check_images(calibration: list[Path]) -> tuple[list[Path], bool]:
    """The sample X-rays that validate an export, and whether they leave out every calibration image: those that
    were not used for calibration when there are any (with the default calibration, the sample's test_image/),
    else all of them."""
    checks = sample_images()
    used = {_identity(path) for path in calibration}
    held_out = [path for path in checks if _identity(path) not in used]
    if held_out:
        return held_out, True
    return checks, not used


def _identity(path: Path) -> tuple[int, int] | Path:
    try:
        status = path.stat()
        return status.st_dev, status.st_ino
    except OSError:
        return path.absolute()


def export_onnx(
    checkpoint_path: Path, out_path: Path, *, int8: bool = False, calibration: Path | None = None
) -> ExportResult:
    """Export a cxrseg checkpoint to ONNX at `out_path`, written atomically once it validates.

    The model keeps the checkpoint's metadata (format, versions, settings, epoch, metrics) plus its precision,
    threshold and preprocessing in metadata_props. With `int8`, weights and activations are quantized statically,
    calibrated on the images of `calibration` (default: the packaged sample's image/). Validation runs torch and
    ONNX Runtime on the packaged sample X-rays (for int8, those not used for calibration where there are any); an
    fp32 model that differs by more than FP32_TOLERANCE is refused, and so is an int8 model whose lung masks reach
    a mean Dice below INT8_MIN_DICE against torch's (calibrated on images unlike X-rays). Paths are checked first
    (check_paths); nothing is written when a check fails.
    """
    start = time.perf_counter()
    check_paths(checkpoint_path, out_path)
    model, info = load_checkpoint(checkpoint_path)
    size, threshold = info.settings.preprocess.image_size, info.settings.inference.threshold
    calibration_paths = calibration_images(calibration) if int8 else []
    proto = to_onnx_proto(model, size)
    if int8:
        with tempfile.TemporaryDirectory(prefix="cxrseg-quantize-") as work:
            proto = _quantize(proto, calibration_paths, size, Path(work), info.settings.preprocess.trim_border)
    _attach(proto, _metadata(info, checkpoint_path, "int8" if int8 else "fp32", calibration_paths))
    onnx = require("onnx", "ONNX export")
    checks, held_out = check_images(calibration_paths)
    with atomic_path(out_path) as tmp:
        onnx.save(proto, tmp)
        max_diff, agreement, dice = validate(model, tmp, checks, threshold)
        if not int8 and max_diff > FP32_TOLERANCE:
            raise CheckpointError(
                f"The ONNX export of {checkpoint_path} differs from torch by {max_diff:.2g} in probability "
                f"(more than {FP32_TOLERANCE:g}); not written. Report this with your torch and onnx versions."
            )
        if int8 and dice < INT8_MIN_DICE:
            where = calibration_paths[0].parent if calibration_paths else calibration
            raise DataError(
                f"The int8 model of {checkpoint_path} calibrated on {where} segments the lungs unlike torch (mean "
                f"Dice {dice:.3f} on {len(checks)} sample X-rays, below {INT8_MIN_DICE}); not written. Calibrate "
                "on real training X-rays: --calibration DATA (a dataset folder, or a folder of its images)."
            )
    return ExportResult(
        path=out_path,
        precision="int8" if int8 else "fp32",
        max_abs_diff=max_diff,
        mask_agreement=agreement,
        validation_images=len(checks),
        calibration_images=len(calibration_paths),
        size_bytes=out_path.stat().st_size,
        seconds=time.perf_counter() - start,
        lung_dice=dice,
        held_out=held_out,
    )


def _metadata(info: CheckpointInfo, source: Path, precision: str, calibration: list[Path]) -> dict[str, str]:
    metadata = checkpoint_metadata(info)
    metadata |= {
        "precision": precision,
        "threshold": str(info.settings.inference.threshold),
        "preprocessing": describe_preprocessing(metadata["settings"]),
        "source_checkpoint": source.name,
    }
    if calibration:
        metadata["calibration"] = f"{len(calibration)} images from {calibration[0].parent}"
    return metadata
