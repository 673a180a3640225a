"""What lies over the lung in real films: opacities (consolidation, effusion, ground glass) and burnt-in marks."""

from __future__ import annotations

import io
import random
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

WORDS = ("L", "R", "AP", "PA", "PORTABLE", "SUPINE", "ERECT", "SEMI-ERECT", "DX", "CHEST", "12/03", "08:41", "1", "2")


def _rand(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _smooth(field: torch.Tensor, k: int) -> torch.Tensor:
    """Box blur of an (S, S) map, same size."""
    k = max(1, k) | 1
    return F.avg_pool2d(field[None, None], k, stride=1, padding=k // 2, count_include_pad=False)[0, 0]


def _texture(size: int, cells: int, generator) -> torch.Tensor:
    coarse = torch.rand(1, 1, cells, cells, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0].clamp(0, 1)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column coordinates of an (S, S) map."""
    return torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )


def _lung_on_side(mask: torch.Tensor, image_left: bool) -> torch.Tensor:
    """The part of the mask left (the patient's right lung) or right (the left lung) of its centroid column."""
    cols = torch.arange(mask.shape[-1], dtype=mask.dtype)
    centre = float((mask.sum(0) * cols).sum() / mask.sum().clamp_min(1))
    left = (cols < centre).to(mask.dtype).view(1, -1)
    return mask * (left if image_left else 1 - left)


def _one_lung(mask: torch.Tensor, generator) -> torch.Tensor:
    """The mask of one lung: the part on a random side of the mask's centroid column."""
    return _lung_on_side(mask, _rand(generator) < 0.5)


def consolidation(lung: torch.Tensor, generator) -> torch.Tensor:
    """(S, S) opacity weight in [0, 1]: one to three soft-edged patches inside `lung`, lobar edges sometimes."""
    size = lung.shape[-1]
    yy, xx = _grid(size)
    points = lung.flatten().nonzero()[:, 0]
    weight = torch.zeros_like(lung)
    for _ in range(1 + int(_rand(generator) * 2.5)):
        pick = points[int(_rand(generator) * len(points))]
        cy, cx = float(pick // size), float(pick % size)
        ry, rx = _rand(generator, 0.08, 0.3) * size, _rand(generator, 0.06, 0.18) * size
        distance = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2).sqrt()
        patch = torch.sigmoid((1 - distance) / _rand(generator, 0.1, 0.35))
        if _rand(generator) < 0.4:  # bounded by a fissure: a sharp straight edge through the patch
            angle = _rand(generator, 0, 2 * np.pi)
            along = (yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
            patch = patch * torch.sigmoid((along + _rand(generator, -0.3, 0.3) * ry) / 1.5)
        weight = torch.maximum(weight, patch)
    texture = 0.55 + 0.45 * _texture(size, 10, generator)
    return weight * texture * _smooth(lung, max(3, size // 32))


def extensive(mask: torch.Tensor, generator) -> torch.Tensor:
    """(S, S) weight: a dense opacity over 30-100 % of one or both lungs, the bases first, as multilobar or
    bilateral pneumonia and a white-out show it."""
    size = mask.shape[-1]
    lung = mask if _rand(generator) < 0.5 else _one_lung(mask, generator)
    rows = lung.sum(1).nonzero()[:, 0]
    top, bottom = float(rows.min()), float(rows.max())
    yy, _ = _grid(size)
    towards_base = ((yy - top) / max(1.0, bottom - top)).clamp(0, 1)
    field = _texture(size, 5, generator) + _rand(generator, 0, 1.5) * towards_base
    level = torch.quantile(field[lung > 0.5], 1 - _rand(generator, 0.3, 1.0))  # that share of the lung is under it
    weight = torch.sigmoid((field - level) * _rand(generator, 8, 30))
    texture = 0.75 + 0.25 * _texture(size, 12, generator)
    return weight * texture * _smooth(lung, max(3, size // 32))


def effusion(lung: torch.Tensor, generator) -> torch.Tensor:
    """(S, S) weight: the base of one hemithorax filled up to a meniscus that climbs laterally."""
    size = lung.shape[-1]
    rows, cols = lung.sum(1).nonzero()[:, 0], lung.sum(0).nonzero()[:, 0]
    top, bottom, left, right = float(rows.min()), float(rows.max()), float(cols.min()), float(cols.max())
    yy, xx = _grid(size)
    level = bottom - _rand(generator, 0.12, 0.55) * (bottom - top)
    lateral = (xx - size / 2).abs() / max(1.0, max(abs(left - size / 2), abs(right - size / 2)))  # 0 medial, 1 lateral
    meniscus = level - _rand(generator, 0.04, 0.14) * size * lateral.clamp(0, 1) ** 2
    fluid = torch.sigmoid((yy - meniscus) / _rand(generator, 0.8, 3.0))
    width = (right - left) * 0.08
    across = torch.sigmoid((xx - left + width) / 2) * torch.sigmoid((right + width - xx) / 2)
    below = torch.sigmoid((bottom + 0.06 * size - yy) / 2)
    return fluid * across * below


def ground_glass(mask: torch.Tensor, generator) -> torch.Tensor:
    """(S, S) weight: a patchy haze over both lungs."""
    size = mask.shape[-1]
    patches = torch.sigmoid((_texture(size, 6, generator) - _rand(generator, 0.3, 0.6)) * 8)
    return patches * _smooth(mask, max(3, size // 24))


def tissue_levels(images: torch.Tensor, valid: torch.Tensor, share: float = 0.9, bins: int = 64) -> torch.Tensor:
    """(N,) the `share` quantile of each film's valid pixels, from a 64-bin histogram: the soft-tissue level."""
    index = (images.clamp(0, 1) * (bins - 1)).round().long().flatten(1)
    counts = torch.zeros(images.shape[0], bins).scatter_add_(1, index, valid.flatten(1))
    cdf = counts.cumsum(1) / counts.sum(1, keepdim=True).clamp_min(1)
    return (cdf < share).sum(1).float() / (bins - 1)


def add_opacities(
    images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Whiten parts of the lung as pneumonia, effusion or oedema do; the lung mask is left as it is.

    Each chosen image gets one opacity raised towards its soft-tissue level (90th percentile of the film):
    patchy or lobar consolidation in one lung (40 %), a dense opacity over much of one or both lungs (20 %),
    an effusion (20 %) or ground glass (20 %).
    """
    out = images.clone()
    levels = tissue_levels(images, valid)
    for i in range(images.shape[0]):
        mask = masks[i, 0]
        if _rand(generator) >= p or mask.sum() < 20:
            continue
        tissue = float(levels[i])
        kind, target = _rand(generator), tissue * _rand(generator, 0.9, 1.08)
        if kind < 0.4:
            weight, strength = consolidation(_one_lung(mask, generator), generator), _rand(generator, 0.55, 1.0)
        elif kind < 0.6:
            weight, strength = extensive(mask, generator), _rand(generator, 0.8, 1.0)
            target = tissue * _rand(generator, 0.95, 1.12)
        elif kind < 0.8:
            weight, strength = effusion(_one_lung(mask, generator), generator), _rand(generator, 0.7, 1.0)
        else:
            weight, strength = ground_glass(mask, generator), _rand(generator, 0.15, 0.45)
        out[i, 0] = images[i, 0] + strength * weight * (target - images[i, 0]).clamp_min(0)
    return out.clamp(0, 1)


def gas_bubble(mask: torch.Tensor, generator) -> torch.Tensor:
    """(S, S) weight of a gastric gas bubble: a dark dome under the left hemidiaphragm, a flat air-fluid level
    below it, a band of diaphragm between it and the lung. Zero inside the lung mask."""
    size = mask.shape[-1]
    lung = _lung_on_side(mask, image_left=False)  # the patient's left lung
    cols = lung.sum(0).nonzero()[:, 0]
    if len(cols) < 4:
        return torch.zeros_like(mask)
    left, right = float(cols.min()), float(cols.max())
    cx = left + _rand(generator, 0.35, 0.8) * (right - left)  # under the dome, lateral to the heart
    column = lung[:, int(cx)].nonzero()[:, 0]
    base = float(column.max()) if len(column) else float(lung.sum(1).nonzero()[:, 0].max())
    top = base + _rand(generator, 0.01, 0.035) * size  # the diaphragm: a few millimetres of soft tissue
    rx, ry = _rand(generator, 0.06, 0.14) * size, _rand(generator, 0.05, 0.11) * size
    yy, xx = _grid(size)
    distance = (((xx - cx) / rx) ** 2 + ((yy - top - ry) / ry) ** 2).sqrt()  # the dome's top touches `top`
    level = top + ry * _rand(generator, 0.8, 1.6)  # erect films: gas above, fluid below a horizontal line
    weight = torch.sigmoid((1 - distance) / _rand(generator, 0.04, 0.12)) * torch.sigmoid((level - yy) / 0.8)
    weight = weight * (0.75 + 0.25 * _texture(size, 12, generator))  # folds of the stomach wall
    return weight * (1 - _smooth(mask, 3).clamp(0, 1).ceil())


def add_gas_bubbles(
    images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Darken a gastric bubble below the left lung towards the film's air level; the mask is left as it is.

    Gas under the diaphragm is as dark as lung: the model must learn that the diaphragm, not the grey level,
    ends the lung.
    """
    out = images.clone()
    for i in range(images.shape[0]):
        mask = masks[i, 0]
        if _rand(generator) >= p or mask.sum() < 20:
            continue
        air = float(images[i, 0][mask > 0].quantile(_rand(generator, 0.1, 0.5)))
        weight = gas_bubble(mask, generator) * valid[i, 0] * _rand(generator, 0.6, 1.0)
        out[i, 0] = images[i, 0] + weight * (air - images[i, 0]).clamp_max(0)
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _draw_mark(draw: ImageDraw.ImageDraw, rng: random.Random, size: int) -> None:
    """One text label, arrow, line, ruler or ECG lead, at full opacity on an 'L' alpha canvas."""
    x, y = rng.uniform(0, size), rng.uniform(0, size)
    kind = rng.random()
    width = max(1, round(size * rng.uniform(0.006, 0.02)))
    if kind < 0.35:
        draw.text((x, y), rng.choice(WORDS), fill=255, font=_font(max(6, round(size * rng.uniform(0.05, 0.14)))))
    elif kind < 0.55:  # an arrow
        angle, length = rng.uniform(0, 2 * np.pi), size * rng.uniform(0.06, 0.2)
        tip = (x + length * np.cos(angle), y + length * np.sin(angle))
        draw.line([(x, y), tip], fill=255, width=width)
        head = size * 0.03
        left = (tip[0] - head * np.cos(angle - 0.5), tip[1] - head * np.sin(angle - 0.5))
        right = (tip[0] - head * np.cos(angle + 0.5), tip[1] - head * np.sin(angle + 0.5))
        draw.polygon([tip, left, right], fill=255)
    elif kind < 0.7:  # a straight line or a tube
        draw.line([(x, y), (rng.uniform(0, size), rng.uniform(0, size))], fill=255, width=width)
    elif kind < 0.8:  # a ruler with ticks
        length = size * rng.uniform(0.2, 0.5)
        draw.line([(x, y), (x + length, y)], fill=255, width=width)
        for t in np.linspace(0, length, 11):
            draw.line([(x + t, y), (x + t, y - size * 0.02)], fill=255, width=1)
    else:  # an ECG electrode with its lead wire
        r = size * rng.uniform(0.015, 0.035)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=255, width=width)
        points = [(x, y)]
        for _ in range(6):
            points.append((points[-1][0] + rng.uniform(-0.08, 0.08) * size, points[-1][1] + rng.uniform(0, 0.1) * size))
        draw.line(points, fill=255, width=max(1, width // 2), joint="curve")


def burn_in_marks(
    images: torch.Tensor, valid: torch.Tensor, p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Letters, arrows, lines, rulers and ECG leads burnt into the pixels (the mask is unchanged); some JPEG."""
    n, _, size, _ = images.shape
    out = images.clone()
    for i in range(n):
        rng = random.Random(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
        if rng.random() < p:
            canvas = Image.new("L", (size, size))
            draw = ImageDraw.Draw(canvas)
            for _ in range(rng.randint(1, 5)):
                _draw_mark(draw, rng, size)
            alpha = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255) * valid[i, 0]
            value = rng.uniform(0.0, 0.12) if rng.random() < 0.25 else rng.uniform(0.85, 1.0)
            out[i, 0] = out[i, 0] * (1 - alpha) + value * alpha
        if rng.random() < p / 2:  # JPEG artefacts of a re-saved or downloaded film
            picture = Image.fromarray((out[i, 0].clamp(0, 1).numpy() * 255).astype(np.uint8))
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=rng.randint(8, 45))
            decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255
            out[i, 0] = torch.from_numpy(decoded) * valid[i, 0]
    return out
