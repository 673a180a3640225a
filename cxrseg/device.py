"""Device choice and mixed precision, shared by training and inference."""

from __future__ import annotations

import contextlib

import torch

from cxrseg.config import Device, Precision
from cxrseg.errors import ConfigError


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


def cpu_has_amx() -> bool:
    """AMX matrix tiles (Intel Xeon since Sapphire Rapids): bf16 matrix maths several times faster than AVX-512."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


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


def use_channels_last(device: torch.device) -> bool:
    """channels_last suits CPU and CUDA convolutions; MPS runs faster in the default layout."""
    return device.type != "mps"
