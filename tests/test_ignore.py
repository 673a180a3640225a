"""Ignore masks (ignore/ beside image/ and mask/): pixels of a training film that the loss leaves out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cxrseg.training.loop as loop
from cxrseg.augment import augment_batch
from cxrseg.config import AugmentSettings
from cxrseg.dataset import dataset_splits, find_pairs, load_pairs
from cxrseg.errors import DataError
from cxrseg.losses import segmentation_loss
from cxrseg.training.loop import train
from tests.conftest import tiny_config


def write_ignore(dataset: Path, name: str, box: tuple[slice, slice], size: tuple[int, int] = (64, 64)) -> Path:
    """ignore/<name>.png, white inside `box`."""
    ignore = np.zeros(size, dtype=np.uint8)
    ignore[box] = 255
    (dataset / "ignore").mkdir(exist_ok=True)
    path = dataset / "ignore" / f"{name}.png"
    Image.fromarray(ignore).save(path)
    return path


def test_ignore_masks_attach_to_their_training_pairs_only(dataset: Path) -> None:
    path = write_ignore(dataset, "case_001", (slice(0, 32), slice(0, 64)))
    splits = dataset_splits(dataset, 0.3, seed=0)
    carried = {p.name: p.ignore for p in splits["train"] + splits["val"]}
    assert carried.pop("case_001") == path
    assert set(carried.values()) == {None}
    assert all(p.ignore is None for p in splits["test"])  # test pairs never carry one


def test_a_stray_ignore_mask_is_named(dataset: Path) -> None:
    write_ignore(dataset, "case_999", (slice(0, 8), slice(0, 8)))
    with pytest.raises(DataError, match="without a training image.*case_999.png"):
        dataset_splits(dataset)


def test_an_ignore_mask_of_another_size_is_named(dataset: Path) -> None:
    write_ignore(dataset, "case_002", (slice(0, 8), slice(0, 8)), size=(48, 64))
    pairs = dataset_splits(dataset, 0.3)["train"] + dataset_splits(dataset, 0.3)["val"]
    with pytest.raises(DataError, match=r"ignore/case_002.png \(48, 64\)"):
        load_pairs(pairs, 32)


def test_loaded_weight_is_zero_exactly_where_ignored(dataset: Path) -> None:
    assert load_pairs(find_pairs(dataset / "image", dataset / "mask"), 32).weight is None  # none: no tensor
    write_ignore(dataset, "case_001", (slice(0, 32), slice(0, 64)))  # the top half of the film
    pairs = dataset_splits(dataset, 0.0001)["train"] + dataset_splits(dataset, 0.0001)["val"]
    cached = load_pairs(sorted(pairs, key=lambda p: p.name), 32)
    assert cached.weight is not None and cached.weight.shape == cached.masks.shape
    film = [p.name for p in cached.pairs].index("case_001")
    weight = cached.weight[film, 0]
    assert weight[:16].sum() == 0  # 64 px -> 32 px: rows 0-15 ignored, and row 16 that the resize blends in
    assert weight[18:].min() == 1 and weight[16:18].sum() > 0
    others = torch.cat([cached.weight[:film], cached.weight[film + 1 :]])
    assert others.min() == 1


def test_the_weight_follows_the_lung_mask_through_the_framing() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 8:24, 4:14] = 1
    masks[:, :, 8:24, 18:28] = 1
    weight = 1 - masks  # ignore everything but the lungs: after any warp, the two channels stay complements
    images = torch.rand(4, 1, 32, 32, generator=generator)
    cfg = AugmentSettings(rotate_degrees=30, zoom_min=0.6, zoom_max=1.5, border_p=0, letterbox_p=0)
    _, out, valid = augment_batch(images, torch.cat([masks, weight], 1), torch.ones(4, 1, 32, 32), cfg, generator)
    assert out.shape == (4, 2, 32, 32)
    lung, kept = out[:, :1], out[:, 1:]
    inside = valid > 0
    assert not torch.equal(lung, masks)  # the warp moved the lungs ...
    agree = ((lung + kept) == 1)[inside].float().mean()
    assert agree > 0.99  # ... and the weight with them


def test_the_loss_does_not_see_ignored_pixels() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 16, 16, generator=generator, requires_grad=True)
    targets = (torch.rand(2, 1, 16, 16, generator=generator) > 0.5).float()
    weight = torch.ones(2, 1, 16, 16)
    weight[:, :, :8] = 0
    loss = segmentation_loss(logits, targets, weight)
    loss.backward()
    assert logits.grad[:, :, :8].abs().max() == 0 and logits.grad[:, :, 8:].abs().max() > 0
    flipped = targets.clone()
    flipped[:, :, :8] = 1 - flipped[:, :, :8]  # other labels where ignored: the same loss
    assert torch.isclose(segmentation_loss(logits, flipped, weight), loss)


def test_training_scores_the_loss_without_the_ignored_pixels(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scored: list[float] = []
    real = loop.segmentation_loss

    def spy(logits, targets, valid, dice_weight):
        scored.append(float(valid.sum()))
        return real(logits, targets, valid, dice_weight)

    monkeypatch.setattr(loop, "segmentation_loss", spy)
    settings = tiny_config(tmp_path / "runs", dataset, epochs=1)
    train(settings)
    assert min(scored) > 0  # without ignore masks every batch is scored
    for name in [p.name for p in find_pairs(dataset / "image", dataset / "mask")]:
        write_ignore(dataset, name, (slice(0, 64), slice(0, 64)))  # every pixel of every film ignored
    scored.clear()
    train(tiny_config(tmp_path / "runs2", dataset, epochs=1))
    assert scored and max(scored) == 0
