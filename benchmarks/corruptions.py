"""Seeded film corruptions for the robustness benchmark, in numpy / Pillow / scipy.ndimage only.

Written apart from the training augmentation (cxrseg.augment), with their own parameter values and seeds,
so that a model is never graded on the transforms it was trained with. Each corruption takes an 8-bit
(H, W) image and its boolean lung mask at full resolution and returns both: geometric corruptions move
the mask with the image (nearest / threshold at 0.5), intensity ones leave it as it is. The lung field is
anatomical: lung hidden by an opacity, a mark or noise is still lung.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

SEED = 90_917
"""The benchmark's own seed; training never uses it."""

Pair = tuple[np.ndarray, np.ndarray]  # (uint8 (H, W) image, bool (H, W) mask)


@dataclass(frozen=True)
class Corruption:
    name: str
    apply: Callable[[np.ndarray, np.ndarray, np.random.Generator], Pair]
    geometric: bool


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _resize(image: np.ndarray, mask: np.ndarray, height: int, width: int) -> Pair:
    """Bilinear image, mask resized as a float and thresholded at 0.5."""
    small = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    soft = Image.fromarray(mask.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(small), np.asarray(soft) > 0.5


def _lungs(mask: np.ndarray) -> list[np.ndarray]:
    """The two largest connected components of the mask (one per lung), largest first."""
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum_labels(mask, labels, range(1, count + 1))
    return [labels == 1 + i for i in np.argsort(sizes)[::-1][:2]]


def _one_lung(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    lungs = _lungs(mask)
    return lungs[int(rng.integers(len(lungs)))]


def _soft_tissue_level(image: np.ndarray, mask: np.ndarray, percentile: float) -> float:
    """Brightness of the chest wall and mediastinum: a percentile of a ring just outside the lungs."""
    ring = ndimage.binary_dilation(mask, iterations=max(2, mask.shape[0] // 40)) & ~mask
    return float(np.percentile(image[ring], percentile)) if ring.any() else 200.0


def _blurred_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random texture scaled to [0, 1]."""
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (texture - texture.min()) / max(float(np.ptp(texture)), 1e-6)


def _brighten(image: np.ndarray, alpha: np.ndarray, level: float) -> np.ndarray:
    """Move each pixel towards `level` by the weight `alpha` in [0, 1]."""
    values = image.astype(np.float64)
    return _to_uint8(values + alpha * np.maximum(level - values, 0))


def zoom_in_apex(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """A tighter frame: the top ~12% (always through the lung apices) and some of each side cut away."""
    height, width = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    top = round(0.12 * height)
    if rows.size:
        top = max(top, int(rows[0]) + round(0.07 * (rows[-1] - rows[0])))
    left, right = (round(width * f) for f in rng.uniform(0.03, 0.07, 2))
    return image[top:, left : width - right], mask[top:, left : width - right]


def zoom_out(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """The film shrunk to 65% inside a canvas of the original size with a dark or mid-grey margin."""
    height, width = mask.shape
    inner_h, inner_w = round(height * 0.65), round(width * 0.65)
    small, small_mask = _resize(image, mask, inner_h, inner_w)
    border = int(rng.choice([12, 128]))
    top, left = int(rng.integers(0, height - inner_h + 1)), int(rng.integers(0, width - inner_w + 1))
    out, out_mask = np.full_like(image, border), np.zeros_like(mask)
    out[top : top + inner_h, left : left + inner_w] = small
    out_mask[top : top + inner_h, left : left + inner_w] = small_mask
    return out, out_mask


def rotate_15(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Rotation by 15 degrees about the centre, corners filled with black."""
    turned = ndimage.rotate(image.astype(np.float32), 15, reshape=False, order=1, cval=0.0)
    turned_mask = ndimage.rotate(mask.astype(np.float32), 15, reshape=False, order=1, cval=0.0)
    return _to_uint8(turned), turned_mask > 0.5


def low_res_256(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Half resolution (256 px for a 512 px film), scored at the smaller mask's size."""
    height, width = mask.shape
    small = Image.fromarray(image).resize((width // 2, height // 2), Image.Resampling.BOX)
    _, small_mask = _resize(image, mask, height // 2, width // 2)
    return np.asarray(small), small_mask


def noise(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Quantum (Poisson, 50 counts at white) plus electronic (Gaussian, sd 10 grey levels) noise."""
    counts = rng.poisson(image.astype(np.float64) / 255 * 50) / 50 * 255
    return _to_uint8(counts + rng.normal(0, 10, image.shape)), mask


def _gamma(value: float) -> Callable[[np.ndarray, np.ndarray, np.random.Generator], Pair]:
    def apply(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        return _to_uint8(255 * (image / 255.0) ** value), mask

    apply.__doc__ = f"Gamma {value} on the 8-bit grey levels."
    return apply


def _opaque_region(lung: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """The `share` of `lung` nearest a random lung pixel, its edge made irregular by smooth noise."""
    ys, xs = np.nonzero(lung)
    seed = int(rng.integers(ys.size))
    yy, xx = np.indices(lung.shape)
    scale = lung.shape[0] / 8
    field = np.hypot(yy - ys[seed], xx - xs[seed]) + scale * _blurred_noise(lung.shape, scale / 3, rng)
    return lung & (field <= np.percentile(field[lung], 100 * share))


def _opacify(
    image: np.ndarray, mask: np.ndarray, region: np.ndarray, strength: float, rng: np.random.Generator
) -> np.ndarray:
    """Raise `region` (soft edges, texture) towards the soft-tissue brightness around the lungs."""
    alpha = np.clip(ndimage.gaussian_filter(region.astype(np.float64), mask.shape[0] / 100), 0, 1)
    texture = 0.8 + 0.2 * _blurred_noise(mask.shape, mask.shape[0] / 120, rng)
    return _brighten(image, strength * alpha * texture, _soft_tissue_level(image, mask, 85))


def consolidation(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """A soft-edged, textured opacity raised towards soft-tissue brightness over a third of one lung."""
    return _opacify(image, mask, _opaque_region(_one_lung(mask, rng), 1 / 3, rng), 0.95, rng), mask


def consolidation_both(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Dense opacities over half of each lung, at full soft-tissue brightness (bilateral pneumonia)."""
    region = np.zeros_like(mask)
    for lung in _lungs(mask):
        region |= _opaque_region(lung, 0.5, rng)
    return _opacify(image, mask, region, 1.0, rng), mask


def whiteout(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """One whole lung opacified (a white-out: lobar pneumonia of every lobe, or fluid)."""
    return _opacify(image, mask, _one_lung(mask, rng), 0.95, rng), mask


def effusion(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Fluid at the base of one lung up to a meniscus that climbs towards the chest wall."""
    lung = _one_lung(mask, rng)
    rows, cols = np.flatnonzero(lung.any(axis=1)), np.flatnonzero(lung.any(axis=0))
    lung_h, lung_w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    lateral_is_left = cols.mean() < mask.shape[1] / 2  # the lung's outer side faces the nearer image edge
    yy, xx = np.indices(mask.shape)
    t = np.clip((xx - cols[0]) / lung_w, 0, 1)
    t = 1 - t if lateral_is_left else t  # 0 medially, 1 at the chest wall
    medial_level = rows[-1] - rng.uniform(0.2, 0.3) * lung_h
    level = medial_level - 0.2 * lung_h * t**2
    margin = lung_w // 10
    base = rows[-1] + 0.1 * lung_h
    region = (yy >= level) & (yy <= base) & (xx >= cols[0] - margin) & (xx <= cols[-1] + margin)
    alpha = np.clip(ndimage.gaussian_filter(region.astype(np.float64), mask.shape[0] / 120), 0, 1)
    texture = 0.85 + 0.15 * _blurred_noise(mask.shape, mask.shape[0] / 60, rng)
    return _brighten(image, 0.9 * alpha * texture, _soft_tissue_level(image, mask, 80)), mask


def _arrow(draw: ImageDraw.ImageDraw, tip: tuple[float, float], length: float, angle: float, fill: int) -> None:
    dx, dy = np.cos(angle), np.sin(angle)
    tail = (tip[0] - length * dx, tip[1] - length * dy)
    draw.line([tail, tip], fill=fill, width=max(1, round(length / 12)))
    head, side = length / 3, length / 6
    base = (tip[0] - head * dx, tip[1] - head * dy)
    corners = [(base[0] - side * dy, base[1] + side * dx), (base[0] + side * dy, base[1] - side * dx)]
    draw.polygon([tip, *corners], fill=fill)


def burnt_text(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Letters, labels and arrows burnt into the film, white and black, some over the lungs."""
    height, width = mask.shape
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(8, height // 16))
    small = ImageFont.load_default(size=max(6, height // 28))
    draw.text((width * 0.04, height * 0.04), str(rng.choice(["R", "L"])), fill=255, font=font)
    draw.text((width * 0.55, height * 0.03), "AP PORTABLE", fill=255, font=small)
    clock = f"{int(rng.integers(10, 24))}:{int(rng.integers(10, 60))}"
    draw.text((width * 0.05, height * 0.92), clock, fill=0, font=small)
    ys, xs = np.nonzero(mask) if mask.any() else (np.array([height // 2]), np.array([width // 2]))
    for index, fill in enumerate((255, 255, 0)):
        pick = int(rng.integers(ys.size))
        tip = (float(xs[pick]), float(ys[pick]))
        _arrow(draw, tip, height / 8, float(rng.uniform(0, 2 * np.pi)), fill)
        if index == 0:
            draw.text((tip[0] + width * 0.02, tip[1]), "SUPINE", fill=fill, font=small)
    return np.asarray(picture), mask


def portable(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """A portable AP film: a narrow grey window over a lifted black level, soft focus, some noise."""
    values = 90 + 0.45 * image.astype(np.float64)
    values = ndimage.gaussian_filter(values, image.shape[0] / 300)
    return _to_uint8(values + rng.normal(0, 4, image.shape)), mask


def jpeg_q15(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """JPEG at quality 15."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=15)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L")), mask


def aspect_4_3(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """The film squeezed to three quarters of its width (a 4:3 portrait film)."""
    height, width = mask.shape
    return _resize(image, mask, height, round(width * 0.75))


def bright_border(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Unexposed (white) collimator bands along two edges of the film."""
    out = image.copy()
    height, width = mask.shape
    band = round(height * rng.uniform(0.05, 0.08))
    out[:, :band] = 250
    out[height - band :, :] = 250
    return out, mask


CORRUPTIONS = {
    c.name: c
    for c in [
        Corruption("zoom_in_apex", zoom_in_apex, geometric=True),
        Corruption("zoom_out", zoom_out, geometric=True),
        Corruption("rotate_15", rotate_15, geometric=True),
        Corruption("low_res_256", low_res_256, geometric=True),
        Corruption("aspect_4_3", aspect_4_3, geometric=True),
        Corruption("noise", noise, geometric=False),
        Corruption("gamma_0.45", _gamma(0.45), geometric=False),
        Corruption("gamma_2.2", _gamma(2.2), geometric=False),
        Corruption("consolidation", consolidation, geometric=False),
        Corruption("consolidation_both", consolidation_both, geometric=False),
        Corruption("whiteout", whiteout, geometric=False),
        Corruption("effusion", effusion, geometric=False),
        Corruption("burnt_text", burnt_text, geometric=False),
        Corruption("portable", portable, geometric=False),
        Corruption("jpeg_q15", jpeg_q15, geometric=False),
        Corruption("bright_border", bright_border, geometric=False),
    ]
}


@dataclass(frozen=True)
class Stacked:
    """Several corruptions at once, as on a real film: each step with its own draw, in the order given."""

    name: str
    steps: tuple[str, ...]

    @property
    def geometric(self) -> bool:
        return any(CORRUPTIONS[step].geometric for step in self.steps)


STACKED = {
    s.name: s
    for s in [
        Stacked("icu_portable", ("consolidation_both", "portable", "burnt_text", "zoom_in_apex")),
        Stacked("journal_figure", ("consolidation", "zoom_in_apex", "low_res_256", "jpeg_q15", "burnt_text")),
        Stacked("whiteout_rotated", ("whiteout", "portable", "rotate_15")),
        Stacked("effusion_tight_dark", ("effusion", "consolidation", "zoom_in_apex", "gamma_0.45")),
        Stacked("small_noisy_margin", ("zoom_out", "noise")),
        Stacked("small_low_res_noisy", ("zoom_out", "low_res_256", "noise", "gamma_2.2")),
    ]
}
"""Stacked corruptions: reported apart from the single ones, whose mean they leave as it was."""

ALL: dict[str, Corruption | Stacked] = {**CORRUPTIONS, **STACKED}


def corrupt(name: str, image: np.ndarray, mask: np.ndarray, key: str) -> Pair:
    """Apply corruption `name` with a generator seeded by the benchmark seed, the corruption and `key`
    (the image's name), so every image gets the same draw on every run and in any order. A stacked
    corruption seeds each of its steps apart, by its own name and the step's."""
    if name in STACKED:
        for step in STACKED[name].steps:
            rng = np.random.default_rng(
                [SEED, zlib.crc32(name.encode()), zlib.crc32(step.encode()), zlib.crc32(key.encode())]
            )
            image, mask = CORRUPTIONS[step].apply(image, mask, rng)
        return image, mask
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode()), zlib.crc32(key.encode())])
    return CORRUPTIONS[name].apply(image, mask, rng)
