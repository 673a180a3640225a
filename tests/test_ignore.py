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
from cxrseg.imaging import read_mask
from cxrseg.losses import segmentation_loss
from cxrseg.training.data import load_training_data
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
    splits = dataset_splits(dataset, 0.3, seed=0, with_ignores=True)
    carried = {p.name: p.ignore for p in splits["train"] + splits["val"]}
    assert carried.pop("case_001") == path
    assert set(carried.values()) == {None}
    assert all(p.ignore is None for p in splits["test"])  # test pairs never carry one
    assert [p.name for p in splits["val"]] == [p.name for p in dataset_splits(dataset, 0.3, seed=0)["val"]]


def test_scoring_does_not_read_ignore_masks(dataset: Path) -> None:
    write_ignore(dataset, "case_999", (slice(0, 8), slice(0, 8)))  # stray: training refuses it ...
    splits = dataset_splits(dataset)  # ... `cxrseg evaluate` does not look
    assert all(p.ignore is None for p in splits["train"] + splits["val"] + splits["test"])


def test_a_stray_ignore_mask_is_named(dataset: Path) -> None:
    write_ignore(dataset, "case_999", (slice(0, 8), slice(0, 8)))
    with pytest.raises(DataError, match="without a training image.*case_999.png"):
        dataset_splits(dataset, with_ignores=True)


def test_an_ignore_mask_of_another_size_is_named(dataset: Path) -> None:
    write_ignore(dataset, "case_002", (slice(0, 8), slice(0, 8)), size=(48, 64))
    splits = dataset_splits(dataset, 0.3, with_ignores=True)
    with pytest.raises(DataError, match=r"ignore/case_002.png \(48, 64\)"):
        load_pairs(splits["train"] + splits["val"], 32)


def test_loaded_ignored_pixels_are_exactly_the_ignore_mask(dataset: Path) -> None:
    assert load_pairs(find_pairs(dataset / "image", dataset / "mask"), 32).ignored is None  # none: no tensor
    write_ignore(dataset, "case_001", (slice(0, 32), slice(0, 64)))  # the top half of the film
    splits = dataset_splits(dataset, 0.0001, with_ignores=True)
    cached = load_pairs(sorted(splits["train"] + splits["val"], key=lambda p: p.name), 32)
    assert cached.ignored is not None and cached.ignored.shape == cached.masks.shape
    film = [p.name for p in cached.pairs].index("case_001")
    ignored = cached.ignored[film, 0]
    assert ignored[:16].min() == 1  # 64 px -> 32 px: rows 0-15 ignored, and row 16 that the resize blends in
    assert ignored[16].min() == 1 and ignored[17:].max() == 0
    others = torch.cat([cached.ignored[:film], cached.ignored[film + 1 :]])
    assert others.max() == 0


def test_the_ignored_pixels_follow_the_lung_mask_through_the_framing() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 8:24, 4:14] = 1
    masks[:, :, 8:24, 18:28] = 1
    ignored = masks.clone()  # ignore the lungs: after any warp, the two channels stay equal
    images = torch.rand(4, 1, 32, 32, generator=generator)
    cfg = AugmentSettings(rotate_degrees=30, zoom_min=0.6, zoom_max=1.5)
    _, out, _ = augment_batch(images, torch.cat([masks, ignored], 1), torch.ones(4, 1, 32, 32), cfg, generator)
    assert out.shape == (4, 2, 32, 32)
    lung, ignored = out[:, :1] > 0, out[:, 1:] > 0
    assert not torch.equal(out[:, :1], masks)  # the warp moved the lungs ...
    assert (ignored | ~lung).all()  # ... and the ignored pixels with them: all of the lung is ignored ...
    grown = torch.nn.functional.max_pool2d(lung.float(), 3, stride=1, padding=1) > 0
    assert (~ignored | grown).all()  # ... and at most the pixels that touch it


def test_a_thin_ignored_line_stays_whole_through_the_framing() -> None:
    generator = torch.Generator().manual_seed(1)
    masks = torch.zeros(16, 2, 64, 64)
    masks[:, 0, 16:48, 8:56] = 1
    masks[:, 1, 32, :] = 1  # a one-pixel line across the film
    _, out, _ = augment_batch(torch.rand(16, 1, 64, 64), masks, torch.ones(16, 1, 64, 64), AugmentSettings(), generator)
    for film in out[:, 1]:
        cols = film.nonzero()[:, 1]  # columns the line still crosses
        if cols.numel():
            assert cols.unique().numel() == cols.max() - cols.min() + 1  # no column skipped: not a dotted line


def test_what_the_framing_brings_in_from_outside_the_film_is_not_ignored() -> None:
    generator = torch.Generator().manual_seed(2)
    images, valid = torch.rand(32, 1, 32, 32, generator=generator), torch.ones(32, 1, 32, 32)
    masks = torch.zeros(32, 2, 32, 32)  # nothing ignored; zoom-outs draw the opened border as film (border_p)
    _, out, out_valid = augment_batch(images, masks, valid, AugmentSettings(zoom_min=0.5), generator)
    assert out[:, 1:].max() == 0
    assert (out_valid.flatten(1).mean(1) == 1).any() and out_valid.min() == 0  # borders as film and as padding


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


def spy_on_the_loss(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(targets, scored pixels) of every training step."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = loop.segmentation_loss

    def spy(logits, targets, valid, *rest):
        seen.append((targets.detach().clone(), valid.detach().clone()))
        return real(logits, targets, valid, *rest)

    monkeypatch.setattr(loop, "segmentation_loss", spy)
    return seen


@pytest.mark.parametrize("augment", [True, False])
def test_training_scores_only_the_pixels_left_in(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, augment: bool
) -> None:
    seen = spy_on_the_loss(monkeypatch)
    for pair in find_pairs(dataset / "image", dataset / "mask"):  # each film: ignore everything but its lungs
        lung = read_mask(pair.mask)
        (dataset / "ignore").mkdir(exist_ok=True)
        Image.fromarray(((~lung) * 255).astype(np.uint8)).save(dataset / "ignore" / f"{pair.name}.png")
    settings = tiny_config(tmp_path / "runs", dataset, epochs=1)
    # border_p 0: what a zoom-out brings in is padding, not film scored as background
    augmentation = settings.augment.model_copy(update={"enabled": augment, "border_p": 0})
    train(settings.model_copy(update={"augment": augmentation}))
    assert seen
    for targets, scored in seen:
        assert scored.sum() > 0
        assert torch.equal(scored * targets, scored)  # every scored pixel is one of the film's own lung pixels


def test_an_empty_ignore_mask_changes_nothing(tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_on_the_loss(monkeypatch)
    train(tiny_config(tmp_path / "runs", dataset, epochs=1))
    without = [scored for _, scored in seen]
    seen.clear()
    write_ignore(dataset, "case_001", (slice(0, 0), slice(0, 0)))  # ignores no pixel
    train(tiny_config(tmp_path / "runs2", dataset, epochs=1))
    assert len(seen) == len(without)
    for (_, scored), before in zip(seen, without, strict=True):
        assert torch.equal(scored, before)  # the zoomed-out borders of every film are scored as before


def test_ignore_masks_of_validation_films_are_named_as_unused(tmp_path: Path, dataset: Path) -> None:
    settings = tiny_config(tmp_path / "runs", dataset)
    val = dataset_splits(dataset, settings.data.val_fraction, settings.data.split_seed)["val"]
    write_ignore(dataset, val[0].name, (slice(0, 8), slice(0, 8)))
    said: list[str] = []
    data = load_training_data(settings, on_status=said.append)
    assert any("1 ignore masks belong to validation films and are not used" in line for line in said)
    assert data.val.ignored is None and data.train.ignored is None
