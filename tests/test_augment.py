"""Batched augmentation: aligned masks, anatomical lung under opacities and marks, changes that survive z-scoring."""

from __future__ import annotations

import torch

from cxrseg.augment import augment_batch, cumulative_histogram, frame, intensity
from cxrseg.augment_overlays import add_opacities, burn_in_marks
from cxrseg.config import AugmentSettings
from cxrseg.preprocess import normalize
from tests.conftest import ellipse_pair

OFF = AugmentSettings(
    rotate_degrees=0,
    zoom_min=1,
    zoom_max=1,
    aspect=0,
    shift=0,
    border_p=0,
    letterbox_p=0,
    intensity_p=0,
    acquisition_p=0,
    marks_p=0,
    pathology_p=0,
)


def lungs(n: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic films in [0, 1] (dark lungs, bright elsewhere), their masks and all-valid regions."""
    pairs = [ellipse_pair(seed, size, size) for seed in range(n)]
    images = torch.stack([torch.from_numpy(i).float() / 255 for i, _ in pairs])[:, None]
    masks = torch.stack([torch.from_numpy(m).float() for _, m in pairs])[:, None]
    return images, masks, torch.ones_like(images)


def test_identity_when_every_group_is_off() -> None:
    images, masks, valid = lungs()
    out, out_masks, out_valid = augment_batch(images, masks, valid, OFF, torch.Generator().manual_seed(0))
    assert torch.allclose(out, images, atol=1e-5) and torch.equal(out_masks, masks) and torch.equal(out_valid, valid)


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    images, masks, valid = lungs()
    cfg = AugmentSettings()
    a = augment_batch(images, masks, valid, cfg, torch.Generator().manual_seed(3))
    b = augment_batch(images, masks, valid, cfg, torch.Generator().manual_seed(3))
    c = augment_batch(images, masks, valid, cfg, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_masks_stay_binary_and_move_with_images() -> None:
    images = torch.zeros(4, 1, 32, 32)
    images[:, :, 8:24, 4:12] = 1.0  # a bright bar ...
    masks = images.clone()  # ... that is also the mask
    cfg = OFF.model_copy(update={"rotate_degrees": 20, "shift": 0.1, "zoom_min": 0.8, "zoom_max": 1.3, "aspect": 0.1})
    out, out_masks, _ = frame(images, masks, torch.ones_like(images), cfg, torch.Generator().manual_seed(0))
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out_masks, masks)  # it moved
    agreement = ((out > 0.5) == out_masks.bool()).float().mean()
    assert agreement > 0.97


def test_zoom_out_border_is_film_or_padding() -> None:
    images, masks, valid = lungs()
    shrink = OFF.model_copy(update={"zoom_min": 0.6, "zoom_max": 0.61})
    _, _, as_padding = frame(images, masks, valid, shrink.model_copy(update={"border_p": 0}), torch.Generator())
    _, _, as_film = frame(images, masks, valid, shrink.model_copy(update={"border_p": 1}), torch.Generator())
    assert as_padding.mean() < 0.45  # about 0.6**2 of the square is still image
    assert torch.equal(as_film, valid)  # the border belongs to the film


def test_zoom_in_crops_away_lung() -> None:
    images, masks, valid = lungs()
    zoom = OFF.model_copy(update={"zoom_min": 1.8, "zoom_max": 1.8})
    _, out_masks, _ = frame(images, masks, valid, zoom, torch.Generator())
    assert out_masks.sum() > masks.sum()  # magnified ...
    assert out_masks[:, :, 0].sum() > 0  # ... and cut by the top edge, as a tight film cuts the apices


def test_letterbox_blanks_two_opposite_sides() -> None:
    images, masks, valid = lungs(8)
    _, out_masks, out_valid = frame(images, masks, valid, OFF.model_copy(update={"letterbox_p": 1}), torch.Generator())
    kept = out_valid.mean(dim=(1, 2, 3))
    assert ((kept > 0.55) & (kept < 0.97)).all()
    assert (out_masks <= out_valid).all()


def test_intensity_changes_survive_the_z_score() -> None:
    images, masks, valid = lungs(8)
    cfg = OFF.model_copy(update={"intensity_p": 1.0, "gamma": 0.6})
    out = intensity(images, valid, cfg, torch.Generator().manual_seed(1))
    change = (normalize(out, valid) - normalize(images, valid)).abs().mean()
    assert change > 0.05  # a linear brightness/contrast change would give ~0 here


def test_cumulative_histogram_equalises() -> None:
    images = torch.rand(2, 1, 32, 32) ** 3  # skewed to dark
    equalised = cumulative_histogram(images, torch.ones_like(images))
    assert abs(float(equalised.mean()) - 0.5) < 0.05 and float(images.mean()) < 0.35


def test_opacities_whiten_lung_and_leave_the_mask() -> None:
    images, masks, valid = lungs(8)
    out = add_opacities(images, masks, valid, 1.0, torch.Generator().manual_seed(2))
    inside = masks.bool()
    assert (out[inside].mean() - images[inside].mean()) > 0.02  # lung made whiter
    raised = (out - images) > 0.05
    assert (raised & inside).sum() > 0.8 * raised.sum()  # mostly inside the lungs


def test_marks_burn_into_the_film_not_into_padding() -> None:
    images, _, valid = lungs(8)
    valid[:, :, :, :16] = 0
    images = images * valid
    out = burn_in_marks(images, valid, 1.0, torch.Generator().manual_seed(5))
    assert (out - images).abs().sum() > 0
    assert torch.equal(out[:, :, :, :16], images[:, :, :, :16])


def test_full_recipe_keeps_lung_under_pathology_and_marks() -> None:
    images, masks, valid = lungs(8)
    cfg = OFF.model_copy(update={"pathology_p": 1.0, "marks_p": 1.0})
    _, out_masks, _ = augment_batch(images, masks, valid, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(out_masks, masks)
