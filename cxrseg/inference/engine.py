"""The one inference engine behind evaluate, predict and training validation: model set-up, fit, batch,
forward pass, restore and clean-up."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from cxrseg.checkpoint import CheckpointInfo
from cxrseg.config import InferenceSettings, Settings
from cxrseg.device import amp_dtype, autocast, resolve_device, use_channels_last
from cxrseg.inference.backend import load_model
from cxrseg.memory import available_bytes, fit_batch_size
from cxrseg.postprocess import clean_and_count
from cxrseg.preprocess import Geometry, fit_film, normalize, restore, valid_region
from cxrseg.runtime import OnnxModel

# (N, 1, S, S) fitted images in [0, 1] and their valid regions -> (N, 1, S, S) float32 probabilities on the CPU.
# The engine holds one of these; another backend (ONNX Runtime, say) plugs in by supplying its own.
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Fitted:
    """One decoded image fitted into the model's square input."""

    image: np.ndarray  # (S, S) float32 in [0, 1], zero padding
    geometry: Geometry


def fit_image(gray: np.ndarray, size: int, trim: bool = False) -> Fitted:
    """Fit a decoded (H, W) grey image into the (size, size) model input; with `trim`, its uniform margins
    (see cxrseg.preprocess.content_box) are cropped off first."""
    image, geometry = fit_film(gray, size, trim)
    return Fitted(image, geometry)


def stack(items: Sequence[Fitted]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch: (N, 1, S, S) images and (N, 1, S, S) valid regions."""
    images = torch.from_numpy(np.stack([item.image for item in items]))[:, None]
    valid = torch.from_numpy(np.stack([valid_region(item.geometry) for item in items]))[:, None]
    return images, valid


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to `device`, switch to eval mode, channels_last where it is faster."""
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if use_channels_last(device) else model


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
    if use_channels_last(device):
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, dtype):
        probs = torch.sigmoid(model(x).float())
        if tta:
            probs = (probs + torch.sigmoid(model(x.flip(-1)).float()).flip(-1)) / 2
    return (probs * valid.to(device)).cpu()


class Finished(NamedTuple):
    """One model output brought back to its X-ray."""

    prob: np.ndarray  # lung probability at the original size
    mask: np.ndarray  # the final boolean mask
    raw_components: int | None  # parts of the thresholded map before the clean-up; None without clean-up


def finish(prob: np.ndarray | torch.Tensor, geometry: Geometry, cfg: InferenceSettings) -> Finished:
    """(S, S) model probabilities -> probability at the original size and final mask."""
    full = restore(torch.as_tensor(prob), geometry).numpy()
    mask = full > cfg.threshold
    if not cfg.postprocess:
        return Finished(full, mask, None)
    prob = full if cfg.keep_by == "confident_area" else None
    return Finished(full, *clean_and_count(mask, cfg.min_component_fraction, prob=prob))


@dataclass
class Engine:
    """A model ready to predict: its forward pass, its input size and the inference settings.

    Args:
        forward: the forward pass (see `Forward`); `forward_probabilities` bound to a model and device.
        size: the model's square input side, from the checkpoint's preprocessing settings.
        cfg: threshold, post-processing, batch size and test-time augmentation.
        device: where the forward pass runs.
        trim: crop uniform margins before fitting (inference.trim_border, else the checkpoint's
            preprocess.trim_border).
    """

    forward: Forward
    size: int
    cfg: InferenceSettings
    device: torch.device
    trim: bool = False

    def probabilities(self, items: Sequence[Fitted]) -> torch.Tensor:
        """(N, 1, S, S) float32 probabilities of a list of fitted images."""
        return self.forward(*stack(items))


def engine_for(
    model: torch.nn.Module | OnnxModel,
    settings: Settings,
    cfg: InferenceSettings,
    *,
    device: torch.device | None = None,
) -> Engine:
    """An engine around `model`; `settings` are the checkpoint's (input size, precision).

    Without `device`, the model is set up on cfg.device; with it (training validation), it is used as is.
    An OnnxModel runs on the CPU through ONNX Runtime, in the precision it was exported in.
    """
    if isinstance(model, OnnxModel):
        device, dtype = torch.device("cpu"), None
    else:
        if device is None:
            device = resolve_device(cfg.device)
            model = prepare_model(model, device)
            # refuses a model too big for one image; lowers the batch to what fits in free memory
            batch_size, _ = fit_batch_size(settings, cfg.batch_size, available_bytes(device))
            cfg = cfg.model_copy(update={"batch_size": batch_size})
        dtype = amp_dtype(device, settings.train.precision)
    forward = partial(forward_probabilities, model, device=device, dtype=dtype, tta=cfg.tta)
    trim = settings.preprocess.trim_border if cfg.trim_border is None else cfg.trim_border
    return Engine(forward, settings.preprocess.image_size, cfg, device, trim)


def load_engine(checkpoint: Path, cfg: InferenceSettings, images: int | None = None) -> tuple[Engine, CheckpointInfo]:
    """Rebuild the model from a checkpoint (.safetensors or .onnx) on its backend, set up for inference.

    `images`, the number of inputs when known, lets `--backend auto` weigh an in-memory ONNX export.
    """
    model, info = load_model(checkpoint, cfg, images)
    return engine_for(model, info.settings, cfg), info
