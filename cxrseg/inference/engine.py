"""Device choice, mixed precision and the forward pass shared by train validation, evaluate and predict."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from cxrseg.config import Device, InferenceSettings, Precision
from cxrseg.errors import ConfigError
from cxrseg.postprocess import clean_mask
from cxrseg.preprocess import Geometry, normalize, restore


def resolve_device(name: Device) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps asked for, but Apple MPS is not available; use --device cpu or auto.")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()) or bool(
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )


def amp_dtype(device: torch.device, precision: Precision = "auto") -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto`: bf16 on CUDA and on CPUs with native bf16."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def forward_probabilities(
    model: torch.nn.Module,
    images: torch.Tensor,
    valid: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
    tta: bool = False,
) -> torch.Tensor:
    """Lung probabilities for a (N, 1, S, S) batch of fitted images in [0, 1]; returns float32 on the CPU.

    With `tta`, the prediction is averaged with that of the horizontally flipped image.
    """
    x = normalize(images, valid).to(device)
    if device.type != "mps":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, dtype):
        probs = torch.sigmoid(model(x).float())
        if tta:
            probs = (probs + torch.sigmoid(model(x.flip(-1)).float()).flip(-1)) / 2
    return (probs * valid.to(device)).cpu()


def probabilities_to_masks(
    probs: torch.Tensor, geometries: Sequence[Geometry], cfg: InferenceSettings
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each (1, S, S) probability map: (probability at original size, final boolean mask)."""
    results = []
    for prob, geometry in zip(probs, geometries, strict=True):
        full = restore(prob[0], geometry).numpy()
        mask = full > cfg.threshold
        if cfg.postprocess:
            mask = clean_mask(mask, cfg.min_component_fraction)
        results.append((full, mask))
    return results
