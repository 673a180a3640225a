"""Real X-rays for export: calibration of int8 activations and the torch-vs-ONNX Runtime validation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from cxrseg.assets import SAMPLE_DIR
from cxrseg.dataset import IMAGE_DIR, TEST_IMAGE_DIR, list_images
from cxrseg.errors import DataError
from cxrseg.imaging import read_image
from cxrseg.preprocess import fit_film, normalize, valid_region

MAX_CALIBRATION = 64  # ORT keeps every calibration batch's activations in memory; 64 X-rays settle the ranges


def sample_images() -> list[Path]:
    """The packaged sample X-rays (image/ and test_image/): real pixels every installation has."""
    return [path for name in (IMAGE_DIR, TEST_IMAGE_DIR) for path in list_images(SAMPLE_DIR / name)]


def calibration_images(folder: Path | None, limit: int = MAX_CALIBRATION) -> list[Path]:
    """Images of `folder` (an image folder, or a dataset folder whose image/ is the training split; default the
    packaged sample's image/), thinned evenly to at most `limit` in name order."""
    folder = folder if folder is not None else SAMPLE_DIR
    if (folder / IMAGE_DIR).is_dir():
        folder = folder / IMAGE_DIR
    if not folder.is_dir():
        raise DataError(f"Calibration folder {folder} not found; pass --calibration DIR (images, or a dataset).")
    images = list_images(folder)
    if not images:
        raise DataError(f"No images in calibration folder {folder}; pass --calibration DIR with training X-rays.")
    step = max(1, -(-len(images) // limit))
    return images[::step][:limit]


def model_inputs(paths: Sequence[Path], size: int, trim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fitted images and their non-padding regions, (N, 1, S, S) each, exactly as inference prepares them (with
    `trim`, uniform margins cropped off first, as preprocess.trim_border asks)."""
    fitted = [fit_film(read_image(path), size, trim) for path in paths]
    images = torch.from_numpy(np.stack([image for image, _ in fitted]))[:, None]
    valid = torch.from_numpy(np.stack([valid_region(geometry) for _, geometry in fitted]))[:, None]
    return images, valid


class CalibrationReader:
    """onnxruntime.quantization's CalibrationDataReader over normalised X-rays, `batch` at a time."""

    def __init__(self, paths: Sequence[Path], size: int, input_name: str, batch: int = 8, trim: bool = False) -> None:
        images, valid = model_inputs(paths, size, trim)
        x = normalize(images, valid).numpy()
        self.batches = [{input_name: x[i : i + batch]} for i in range(0, len(x), batch)]
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.batches)
