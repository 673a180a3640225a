"""Batched tensor augmentation for films in the wild: framing, intensity, acquisition, burnt-in marks, opacities."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cxrseg.augment_overlays import add_gas_bubbles, add_opacities, burn_in_marks
from cxrseg.config import AugmentSettings


def uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    """(n,) draws from U(low, high)."""
    return low + (high - low) * torch.rand(n, generator=generator)


def chance(n: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """(n,) booleans, each True with probability p."""
    return torch.rand(n, generator=generator) < p


def random_affine(n: int, cfg: AugmentSettings, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, 2, 3) output-to-input matrices for F.affine_grid: rotation, zoom in or out, aspect change, shift.

    A zoom above 1 magnifies (crops away apices or bases), below 1 shrinks the film inside wide borders.
    """
    angle = uniform(n, -1, 1, generator) * math.radians(cfg.rotate_degrees)
    zoom = torch.exp(uniform(n, math.log(cfg.zoom_min), math.log(cfg.zoom_max), generator))
    aspect = torch.exp(uniform(n, -cfg.aspect, cfg.aspect, generator))
    sx, sy = 1 / (zoom * aspect.sqrt()), aspect.sqrt() / zoom  # input units per output unit
    shift = uniform(2 * n, -2 * cfg.shift, 2 * cfg.shift, generator).view(n, 2)  # grid units span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    row_x = torch.stack([cos * sx, -sin * sx, shift[:, 0]], 1)
    row_y = torch.stack([sin * sy, cos * sy, shift[:, 1]], 1)
    return torch.stack([row_x, row_y], 1)


def frame(
    images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, cfg: AugmentSettings, generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Warp the three alike; borders opened by a zoom-out become part of the film or padding; some letterboxing.

    `masks` may have several channels (the lung mask, the ignored pixels), each warped and kept at 0/1: the lung
    where more than half of a pixel is lung, further channels wherever a pixel touches them (an ignored area
    does not shrink). What the warp brings in from outside the film is 0 in each (not lung, not ignored).
    """
    n, _, size, _ = images.shape
    k = masks.shape[1]
    theta = random_affine(n, cfg, generator).to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    stacked = torch.cat([images, masks, valid], dim=1)  # one grid_sample for all: (N, k + 2, S, S)
    warped = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = warped[:, k + 1 : k + 2].clamp(0, 1)
    images = warped[:, :1]
    masks = torch.cat([warped[:, 1:2] > 0.5, warped[:, 2 : k + 1] > 0], dim=1).float()
    # A film scanned or photographed with wide margins: the border is image, not padding. Mostly dark, else any
    # grey up to white; half of them grainy (a photo's noise, a light box, a scanner's bed), so that a large
    # textured region beside the chest is not taken for lung.
    as_film = chance(n, cfg.border_p, generator).view(n, 1, 1, 1)
    fill = torch.where(chance(n, 0.6, generator), uniform(n, 0, 0.25, generator), uniform(n, 0.25, 1, generator))
    grain = torch.where(chance(n, 0.5, generator), uniform(n, 0.02, 0.1, generator), torch.zeros(n))
    margin = fill.view(n, 1, 1, 1) + grain.view(n, 1, 1, 1) * torch.randn(images.shape, generator=generator)
    filled = (images + (1 - inside) * margin).clamp(0, 1)
    images = torch.where(as_film, filled, images)
    valid = torch.where(as_film, valid, (inside > 0.5).float())
    # A film of another aspect ratio, fitted with padding: blank a band at two opposite sides.
    letterbox = chance(n, cfg.letterbox_p, generator)
    keep = uniform(n, 0.6, 0.95, generator)
    start = uniform(n, 0, 1, generator) * (1 - keep)
    coords = (torch.arange(size, dtype=images.dtype) + 0.5) / size
    band = (coords.view(1, -1) >= start.view(-1, 1)) & (coords.view(1, -1) < (start + keep).view(-1, 1))  # (N, S)
    vertical = chance(n, 0.5, generator).view(n, 1, 1)
    band2d = torch.where(
        vertical, band.view(n, size, 1).expand(n, size, size), band.view(n, 1, size).expand(n, size, size)
    )
    band2d = torch.where(letterbox.view(n, 1, 1), band2d, torch.ones_like(band2d)).unsqueeze(1).to(images)
    valid = valid * band2d
    return images * valid, masks * valid, valid


def _blur(images: torch.Tensor, sigma: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Per-image separable Gaussian blur; sigma (N,) in pixels; radius by default 3 sigma of the largest."""
    n, _, size, _ = images.shape
    radius = radius or max(1, int(math.ceil(3 * float(sigma.max()))))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(x.view(1, -1) ** 2) / (2 * sigma.clamp_min(1e-3).view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (N, K)
    flat = images.reshape(1, n, size, size)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(n, 1, 1, -1), groups=n)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(n, 1, -1, 1), groups=n)
    return flat.view(n, 1, size, size)


def low_frequency(n: int, size: int, cells: int, generator) -> torch.Tensor:
    """(N, 1, S, S) smooth random field in [0, 1]: random cells upsampled bicubically."""
    coarse = torch.rand(n, 1, cells, cells, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def cumulative_histogram(images: torch.Tensor, valid: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """(N, 1, S, S): the share of each film's valid pixels at or below each pixel's value (64 bins)."""
    index = (images.clamp(0, 1) * (bins - 1)).round().long().flatten(1)
    counts = torch.zeros(images.shape[0], bins).scatter_add_(1, index, valid.flatten(1))
    cdf = counts.cumsum(1) / counts.sum(1, keepdim=True).clamp_min(1)
    return cdf.gather(1, index).view_as(images)


def _only(selected: torch.Tensor, change: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """`images` with `change(index)` in the selected rows: a transform is computed only for the films it changes.

    `change` gets the (K,) indices of the selected films and returns their (K, 1, S, S) new pixels.
    """
    index = selected.nonzero()[:, 0]
    if len(index) == 0:
        return images
    out = images.clone()
    out[index] = change(index)
    return out


def intensity(images: torch.Tensor, valid: torch.Tensor, cfg: AugmentSettings, generator) -> torch.Tensor:
    """Non-linear remaps that survive the per-image z-score: gamma, sigmoid window, local contrast, equalisation."""
    n, _, size, _ = images.shape
    p = cfg.intensity_p
    gamma = torch.exp(uniform(n, -cfg.gamma, cfg.gamma, generator)).view(n, 1, 1, 1)
    images = _only(chance(n, p, generator), lambda i: images[i].clamp(0, 1) ** gamma[i], images)
    centre, width = uniform(n, 0.3, 0.7, generator).view(n, 1, 1, 1), uniform(n, 0.08, 0.3, generator).view(n, 1, 1, 1)
    low, high = torch.sigmoid((0 - centre) / width), torch.sigmoid((1 - centre) / width)

    def window(i: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid((images[i] - centre[i]) / width[i]) - low[i]) / (high[i] - low[i])

    images = _only(chance(n, p / 3, generator), window, images)
    # Local contrast: add or remove a share of the difference to a coarse background (CLAHE-like or flattening).
    amount = uniform(n, -0.5, 1.2, generator).view(n, 1, 1, 1)

    def local_contrast(i: torch.Tensor) -> torch.Tensor:
        background = F.avg_pool2d(images[i], size // 8)
        background = F.interpolate(background, size=(size, size), mode="bilinear", align_corners=False)
        return images[i] + amount[i] * (images[i] - background)

    images = _only(chance(n, p / 2, generator), local_contrast, images)
    # Histogram equalisation blended in: each pixel mapped through its film's cumulative histogram.
    alpha = uniform(n, 0.3, 1, generator).view(n, 1, 1, 1)

    def equalise(i: torch.Tensor) -> torch.Tensor:
        return (1 - alpha[i]) * images[i] + alpha[i] * cumulative_histogram(images[i], valid[i])

    images = _only(chance(n, p / 4, generator), equalise, images)
    return images.clamp(0, 1)


def _low_resolution(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each film down-sampled by its factor (area) and back up (bilinear)."""
    size = images.shape[-1]
    return torch.cat(
        [
            F.interpolate(
                F.interpolate(image[None], size=max(8, int(size * float(f))), mode="area"),
                size=(size, size),
                mode="bilinear",
                align_corners=False,
            )
            for image, f in zip(images, factor, strict=True)
        ]
    )


def acquisition(images: torch.Tensor, cfg: AugmentSettings, generator) -> torch.Tensor:
    """Low resolution, blur and noise as from an old detector, a phone photo of a film or a small journal figure."""
    n = images.shape[0]
    p = cfg.acquisition_p
    factor = uniform(n, 0.2, 0.6, generator)
    images = _only(chance(n, p / 2, generator), lambda i: _low_resolution(images[i], factor[i]), images)
    blurred = chance(n, p / 2, generator)
    sigma = uniform(n, 0.4, 1.6, generator)
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))  # of the whole batch: the same draws, the same kernels
    images = _only(blurred, lambda i: _blur(images[i], sigma[i], radius), images)
    level = uniform(n, 0.01, 0.07, generator).view(n, 1, 1, 1)
    noise = torch.randn(images.shape, generator=generator)
    images = _only(
        chance(n, p / 2, generator), lambda i: images[i] + noise[i] * level[i] * (0.5 + images[i].clamp(0, 1)), images
    )
    return images.clamp(0, 1)


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    valid: torch.Tensor,
    cfg: AugmentSettings,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a training batch; the lung mask stays anatomical (lung under an opacity or a mark is still lung).

    Shapes: (N, 1, S, S) each; images in [0, 1] (before normalisation), masks and valid in {0, 1}. `masks` may
    carry a second channel, the pixels an ignore mask leaves out of the loss, which follows the lung mask.
    Order: opacities and a gastric bubble on the anatomy, then framing, intensity, acquisition, and marks burnt in last.
    A share `clean_p` of the films comes back as it went in (drawn first; nothing is drawn when it is 0).
    """
    if cfg.clean_p > 0:
        clean = chance(images.shape[0], cfg.clean_p, generator).view(-1, 1, 1, 1)
        new_images, new_masks, new_valid = augment_batch(
            images, masks, valid, cfg.model_copy(update={"clean_p": 0.0}), generator
        )
        return (
            torch.where(clean, images, new_images),
            torch.where(clean, masks, new_masks),
            torch.where(clean, valid, new_valid),
        )
    if cfg.pathology_p > 0:
        images = add_opacities(images, masks, valid, cfg.pathology_p, generator)
    if cfg.gas_bubble_p > 0:
        images = add_gas_bubbles(images, masks, valid, cfg.gas_bubble_p, generator)
    images, masks, valid = frame(images, masks, valid, cfg, generator)
    if cfg.intensity_p > 0:
        images = intensity(images, valid, cfg, generator)
    if cfg.acquisition_p > 0:
        images = acquisition(images, cfg, generator)
    if cfg.marks_p > 0:
        images = burn_in_marks(images, valid, cfg.marks_p, generator)
    return images * valid, masks, valid
