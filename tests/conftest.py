"""Shared fixtures: synthetic ellipse X-rays in the Kaggle layout and tiny settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrseg.config import Settings

TINY_MODEL = ["--image-size", "32", "--base-channels", "4", "--depth", "2", "--batch-size", "4"]
"""`cxrseg train` flags for a U-Net small enough to train in a second."""


def tiny_args(data: Path, runs: Path, epochs: int = 3) -> list[str]:
    """A deterministic `cxrseg train` of a tiny U-Net on `data`."""
    return [
        "train",
        "--data",
        str(data),
        "--runs-dir",
        str(runs),
        "--epochs",
        str(epochs),
        *TINY_MODEL,
        "--deterministic",
        "--seed",
        "3",
    ]


def ellipse_pair(seed: int, height: int = 64, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A dark two-lung 'X-ray' (uint8) and its boolean mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), dtype=bool)
    for cx in (0.3, 0.7):
        cy = 0.5 + rng.uniform(-0.05, 0.05)
        ry, rx = rng.uniform(0.25, 0.32), rng.uniform(0.12, 0.16)
        mask |= ((yy / height - cy) / ry) ** 2 + ((xx / width - cx) / rx) ** 2 <= 1
    image = np.where(mask, 60, 190) + rng.normal(0, 12, (height, width))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_dataset(root: Path, n_train: int = 6, n_test: int = 3, rgb: bool = True, jpeg_masks: bool = True) -> Path:
    """Kaggle layout: RGB image/*.png with JPEG mask/*.jpeg (grey edges), plus test_image/ test_mask/."""
    for split, count, offset in (("", n_train, 0), ("test_", n_test, 100)):
        (root / f"{split}image").mkdir(parents=True)
        (root / f"{split}mask").mkdir(parents=True)
        for i in range(count):
            image, mask = ellipse_pair(offset + i)
            picture = Image.fromarray(image).convert("RGB" if rgb else "L")
            picture.save(root / f"{split}image" / f"case_{i:03d}.png")
            mask_image = Image.fromarray(mask.astype(np.uint8) * 255)
            if jpeg_masks:
                mask_image.save(root / f"{split}mask" / f"case_{i:03d}.jpeg", quality=75)
            else:
                mask_image.save(root / f"{split}mask" / f"case_{i:03d}.png")
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


def tiny_config(runs_dir: Path, data: Path, **train: object) -> Settings:
    """Settings of a U-Net small enough to train in a second on `data`; `train` overrides the train section."""
    return Settings.model_validate(
        {
            "data": {"root": data},
            "preprocess": {"image_size": 32},
            "model": {"base_channels": 4, "depth": 2},
            "train": {"epochs": 2, "batch_size": 4, "runs_dir": runs_dir, "previews": 0, **train},
        }
    )


@pytest.fixture
def tiny_settings(tmp_path: Path, dataset: Path) -> Settings:
    return tiny_config(tmp_path / "runs", dataset, previews=2, lr=1e-2)
