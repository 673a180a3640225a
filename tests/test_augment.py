"""Batched augmentation keeps images and masks aligned."""

from __future__ import annotations

import torch

from cxrseg.augment import augment_batch
from cxrseg.config import AugmentSettings


def test_identity_when_all_magnitudes_are_zero() -> None:
    cfg = AugmentSettings(rotate_degrees=0, scale=0, shift=0, brightness=0, contrast=0, gamma=0)
    images = torch.rand(3, 1, 16, 16)
    masks = (torch.rand(3, 1, 16, 16) > 0.5).float()
    valid = torch.ones(3, 1, 16, 16)
    out, out_masks, out_valid = augment_batch(images, masks, valid, cfg)
    assert torch.allclose(out, images, atol=1e-5) and torch.equal(out_masks, masks) and torch.equal(out_valid, valid)


def test_masks_stay_binary_and_move_with_images() -> None:
    images = torch.zeros(4, 1, 32, 32)
    images[:, :, 8:24, 4:12] = 1.0  # a bright bar ...
    masks = images.clone()  # ... that is also the mask
    generator = torch.Generator().manual_seed(0)
    cfg = AugmentSettings(brightness=0, contrast=0, gamma=0, rotate_degrees=20, shift=0.1)
    out, out_masks, _ = augment_batch(images, masks, torch.ones_like(images), cfg, generator)
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out_masks, masks)  # it moved
    agreement = ((out > 0.5) == out_masks.bool()).float().mean()
    assert agreement > 0.97
