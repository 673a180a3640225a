"""Memory a U-Net needs at inference, estimated from its settings, and the batch size that fits."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cxrseg.config import Settings
from cxrseg.errors import CheckpointError

WORKING_COPIES = 8
"""Full-resolution feature maps alive at once per image and first-level channel: the skips of every level add up
to under 2 (C * S^2 * (1 + 1/2 + 1/4 ...)), the last decoder holds a concatenation (2) plus its conv and batch-norm
outputs (2); 8 leaves headroom for the allocator and the resized inputs."""
HEADROOM = 0.8  # use at most this share of the memory reported free


def activation_bytes(settings: Settings, batch_size: int = 1) -> int:
    """Estimated peak bytes of float32 activations for one forward pass without gradients."""
    size = settings.preprocess.image_size
    return WORKING_COPIES * settings.model.base_channels * size * size * 4 * batch_size


def available_bytes(device: torch.device) -> int | None:
    """Memory free on `device` now (CUDA: the driver's figure; CPU: MemAvailable), or None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def fit_batch_size(settings: Settings, batch_size: int, available: int | None) -> tuple[int, str]:
    """The largest batch size up to `batch_size` whose activations fit in `available` bytes, and a note saying
    why it was lowered (empty when unchanged). Raises CheckpointError when even one image does not fit."""
    if available is None:
        return batch_size, ""
    budget = int(available * HEADROOM)
    one = activation_bytes(settings)
    gib = 1024**3
    if one > budget:
        raise CheckpointError(
            f"This model needs about {one / gib:.1f} GiB per image (image size {settings.preprocess.image_size}, "
            f"{settings.model.base_channels} base channels) but only {available / gib:.1f} GiB is free; "
            "use a smaller model or a device with more memory."
        )
    fitted = min(batch_size, budget // one)
    if fitted == batch_size:
        return batch_size, ""
    return fitted, (
        f"Batch size lowered from {batch_size} to {fitted}: about {one / gib:.2f} GiB per image and "
        f"{available / gib:.1f} GiB free."
    )
