"""Which runtime computes the forward pass (torch or ONNX Runtime), chosen once; everything around it is shared."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrseg.checkpoint import CheckpointInfo, load_checkpoint
from cxrseg.config import InferenceSettings, Settings
from cxrseg.device import amp_dtype, cpu_has_amx, resolve_device
from cxrseg.errors import ConfigError
from cxrseg.runtime import OnnxModel, from_checkpoint, is_onnx, load_onnx

ORT_FASTER_ON_CPU = True
"""benchmarks/backends.py: ONNX Runtime fp32 beats torch fp32 and bf16 autocast on CPUs without AMX (see RESULTS.md)."""
AUTO_ORT_MIN_IMAGES = 500
"""A checkpoint is exported in memory for ONNX Runtime (a few seconds) only when a run is long enough to repay it."""


@dataclass
class Placed:
    """A model ready for forward_probabilities: the torch U-Net or an OnnxModel, where it runs and in what dtype."""

    model: torch.nn.Module | OnnxModel
    device: torch.device
    dtype: torch.dtype | None

    @property
    def backend(self) -> str:
        return "onnxruntime" if isinstance(self.model, OnnxModel) else "torch"


def ort_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def choose_backend(path: Path, cfg: InferenceSettings, images: int | None = None) -> str:
    """`torch` or `onnxruntime` for the model file at `path` and a run over `images` inputs (None: unknown).

    `auto`: a .onnx file runs on ONNX Runtime; a checkpoint runs on torch, except on a CPU run of at least
    AUTO_ORT_MIN_IMAGES inputs with ONNX Runtime installed, as the benchmark found it faster there (ORT_FASTER_ON_CPU),
    unless the CPU has AMX matrix tiles: there torch's bf16 autocast was the faster (1.36x ONNX Runtime fp32).
    CUDA and MPS stay torch.
    """
    if cfg.backend == "torch" and is_onnx(path):
        raise ConfigError(
            f"{path} is an ONNX model, which runs on ONNX Runtime; use --backend onnxruntime or auto, "
            "or pass the .safetensors checkpoint it was exported from."
        )
    if cfg.backend != "auto":
        return cfg.backend
    if is_onnx(path):
        return "onnxruntime"
    long_run = images is not None and images >= AUTO_ORT_MIN_IMAGES
    if ORT_FASTER_ON_CPU and long_run and ort_installed() and resolve_device(cfg.device).type == "cpu":
        return "torch" if cpu_has_amx() else "onnxruntime"
    return "torch"


def load_model(
    path: Path, cfg: InferenceSettings, images: int | None = None
) -> tuple[torch.nn.Module | OnnxModel, CheckpointInfo]:
    """The model in `path` (.safetensors or .onnx) on the backend `cfg` asks for, and what the file says."""
    backend = choose_backend(path, cfg, images)
    if backend == "onnxruntime" and cfg.device not in ("auto", "cpu"):
        raise ConfigError(
            f"--backend onnxruntime runs on the CPU, but --device {cfg.device} was asked for; "
            "use --device cpu, or --backend torch with a .safetensors checkpoint."
        )
    if backend == "onnxruntime" and is_onnx(path):
        model = load_onnx(path)
        return model, model.info
    model, info = load_checkpoint(path)
    if backend == "onnxruntime":
        onnx_model = from_checkpoint(model, info, path)
        return onnx_model, onnx_model.info
    return model, info


def place(model: torch.nn.Module | OnnxModel, settings: Settings, cfg: InferenceSettings) -> Placed:
    """Move a torch model to its device (channels_last, eval) with its autocast dtype; ONNX Runtime runs on the
    CPU in the precision it was exported in."""
    if isinstance(model, OnnxModel):
        return Placed(model, torch.device("cpu"), None)
    device = resolve_device(cfg.device)
    model = model.to(device).eval()
    if device.type != "mps":
        model = model.to(memory_format=torch.channels_last)
    return Placed(model, device, amp_dtype(device, settings.train.precision))
