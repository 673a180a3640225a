"""Batched augmentation: aligned masks, anatomical lung under opacities and marks, changes that survive z-scoring."""

from __future__ import annotations

import math

import pytest
import torch

from cxrseg.augment import augment_batch, cumulative_histogram, frame, intensity, random_affine
from cxrseg.augment_overlays import add_gas_bubbles, add_opacities, burn_in_marks, extensive
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
    gas_bubble_p=0,
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


def test_extensive_opacity_covers_much_of_one_or_both_lungs_bases_first() -> None:
    _, masks, _ = lungs(1, 96)
    mask = masks[0, 0]
    half = mask.shape[-1] // 2
    sides, lower_minus_upper = set(), 0.0
    rows = mask.sum(1).nonzero()[:, 0]
    middle = int(rows.float().mean())
    for seed in range(24):
        weight = extensive(mask, torch.Generator().manual_seed(seed))
        assert float(weight[mask == 0].max()) < 0.6 and float(weight.min()) >= 0  # only in and at the lung's edge
        covered = (weight > 0.3) & (mask > 0)
        share = [
            float(covered[:, :half].sum() / mask[:, :half].sum()),
            float(covered[:, half:].sum() / mask[:, half:].sum()),
        ]
        assert max(share) > 0.2  # a large part of a lung, not a patch
        sides.add(tuple(s > 0.15 for s in share))
        lower_minus_upper += float(weight[middle:].sum() - weight[:middle].sum())
    assert (True, True) in sides and {(True, False), (False, True)} & sides  # bilateral and one-sided draws
    assert lower_minus_upper > 0  # the bases first


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


def test_blur_matches_scipys_gaussian_with_the_same_support() -> None:
    """Per-image sigma, edges replicated, kernel cut at 3 sigma of the largest sigma of the batch."""
    import numpy as np
    from scipy import ndimage

    from cxrseg.augment import _blur

    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.5, 1.0, 1.7])
    radius = math.ceil(3 * 1.7)
    blurred = _blur(images, sigma)
    assert blurred.shape == images.shape
    for i, s in enumerate(sigma.tolist()):
        expected = ndimage.gaussian_filter(images[i, 0].double().numpy(), s, mode="nearest", truncate=radius / s)
        assert np.allclose(blurred[i, 0].numpy(), expected, atol=1e-5)
    flat = _blur(torch.full((1, 1, 8, 8), 0.3), torch.tensor([0.2]))
    assert torch.allclose(flat, torch.full_like(flat, 0.3))  # sigma below one pixel: radius stays 1


def test_low_frequency_field_is_the_random_cells_smoothly_upsampled() -> None:
    from cxrseg.augment import low_frequency

    same = low_frequency(2, 6, 6, torch.Generator().manual_seed(4))  # as many cells as pixels: the cells
    assert torch.allclose(same, torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(4)), atol=1e-6)
    field = low_frequency(3, 64, 4, torch.Generator().manual_seed(5))
    assert field.shape == (3, 1, 64, 64) and field.min() >= 0 and field.max() <= 1
    assert (field[..., 1:] - field[..., :-1]).abs().max() < 0.1  # smooth: no step between neighbours
    assert (field[..., 1:, :] - field[..., :-1, :]).abs().max() < 0.1
    assert field.std() > 0.05 and not torch.equal(field[0], field[1])
    coarse = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(field[:, :, 8::16, 8::16], coarse, atol=0.15)  # cell centres near their value


def affine(n: int = 400, **changes: float) -> torch.Tensor:
    return random_affine(n, OFF.model_copy(update=changes), torch.Generator().manual_seed(2))


def test_rotations_spread_over_both_directions_up_to_the_limit() -> None:
    theta = affine(rotate_degrees=20)
    angle = torch.atan2(theta[:, 1, 0], theta[:, 0, 0])
    assert angle.abs().max() <= math.radians(20) + 1e-6
    assert angle.min() < -math.radians(18) and angle.max() > math.radians(18)
    assert torch.allclose(theta[:, 0, 1], -theta[:, 1, 0], atol=1e-6) and torch.allclose(theta[:, 0, 0], theta[:, 1, 1])
    assert torch.all(theta[:, :, 2] == 0)


def test_zoom_aspect_and_rotation_compose_as_documented() -> None:
    """theta = [[cos sx, -sin sx, tx], [sin sy, cos sy, ty]], sx = 1 / (zoom sqrt(a)), sy = sqrt(a) / zoom."""
    theta = affine(rotate_degrees=30, zoom_min=0.5, zoom_max=2.0, aspect=0.5)
    sx = torch.linalg.vector_norm(theta[:, 0, :2], dim=1)
    sy = torch.linalg.vector_norm(theta[:, 1, :2], dim=1)
    cos, sin = theta[:, 0, 0] / sx, theta[:, 1, 0] / sy
    assert torch.allclose(cos**2 + sin**2, torch.ones(400), atol=1e-5)
    assert torch.allclose(theta[:, 0, 1], -sin * sx, atol=1e-6) and torch.allclose(theta[:, 1, 1], cos * sy, atol=1e-6)
    zoom, aspect = 1 / (sx * sy).sqrt(), sy / sx
    assert zoom.min() >= 0.5 - 1e-5 and zoom.max() <= 2.0 + 1e-5 and zoom.min() < 0.55 and zoom.max() > 1.8
    assert aspect.min() >= math.exp(-0.5) - 1e-5 and aspect.max() <= math.exp(0.5) + 1e-5
    assert aspect.min() < math.exp(-0.45) and aspect.max() > math.exp(0.45)


def test_shifts_spread_over_both_axes_and_signs() -> None:
    theta = affine(shift=0.1)
    tx, ty = theta[:, 0, 2], theta[:, 1, 2]
    for t in (tx, ty):
        assert t.abs().max() <= 0.2 + 1e-6 and t.min() < -0.18 and t.max() > 0.18
    assert not torch.allclose(tx, ty)
    assert torch.allclose(theta[:, :, :2], torch.eye(2).expand(400, 2, 2))


@pytest.mark.parametrize("group", ["pathology_p", "gas_bubble_p", "intensity_p", "acquisition_p", "marks_p"])
def test_each_group_at_probability_one_changes_the_films(group: str) -> None:
    images, masks, valid = lungs()
    out, _, _ = augment_batch(
        images, masks, valid, OFF.model_copy(update={group: 1.0}), torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(out, images, atol=1e-3)


def test_gas_bubble_darkens_under_the_left_lung_and_leaves_lung_and_mask_alone() -> None:
    """The stomach's gas is as dark as lung but lies under the patient's left hemidiaphragm (image right), outside
    the mask: the film darkens there only, never inside the lung, and the mask stays the anatomy."""
    images, masks, valid = lungs(8, 96)
    out = add_gas_bubbles(images, masks, valid, 1.0, torch.Generator().manual_seed(2))
    change = out - images
    assert (change <= 1e-6).all()  # only darker
    assert change[masks > 0].abs().max() == 0  # no lung pixel changed
    cols = torch.arange(96, dtype=torch.float32)
    drawn = 0
    for i in range(8):
        dark, mask = change[i, 0] < -0.05, masks[i, 0]
        if not dark.any():
            continue
        drawn += 1
        centre = float((mask.sum(0) * cols).sum() / mask.sum())
        left_lung = mask * (cols > centre)
        rows, columns = dark.nonzero(as_tuple=True)
        assert columns.float().mean() > centre  # the image's right half: the patient's left
        assert rows.float().mean() > float((left_lung.sum(1) * cols).sum() / left_lung.sum())  # below the lung
    assert drawn >= 6
    _, out_masks, _ = augment_batch(
        images, masks, valid, OFF.model_copy(update={"gas_bubble_p": 1.0}), torch.Generator().manual_seed(2)
    )
    assert torch.equal(out_masks, masks)


def test_a_share_of_films_is_left_as_it_is() -> None:
    images, masks, valid = lungs(n=400, size=32)
    cfg = AugmentSettings(clean_p=0.25)
    out, out_masks, out_valid = augment_batch(images, masks, valid, cfg, torch.Generator().manual_seed(5))
    kept = [
        i
        for i in range(400)
        if torch.equal(out[i], images[i])
        and torch.equal(out_masks[i], masks[i])
        and torch.equal(out_valid[i], valid[i])
    ]
    assert 70 <= len(kept) <= 130  # a quarter of 400 (standard deviation 8.7): not an eighth, not two fifths
    plain = augment_batch(images, masks, valid, AugmentSettings(), torch.Generator().manual_seed(5))
    assert not any(torch.equal(plain[0][i], images[i]) for i in range(400))  # by default every film changes


def test_zoom_out_margins_take_any_grey_and_some_are_grainy() -> None:
    images, masks, valid = lungs()
    images, masks, valid = (t.repeat(16, 1, 1, 1) for t in (images, masks, valid))  # 16 draws of one film
    shrink = OFF.model_copy(update={"zoom_min": 0.6, "zoom_max": 0.61, "border_p": 1})
    out, _, _ = frame(images, masks, valid, shrink, torch.Generator().manual_seed(3))
    corner = out[:, 0, :4, :4].flatten(1)  # outside the shrunk film in every draw
    levels, spread = corner.mean(1), corner.std(1)
    assert ((levels > 0.3) & (levels < 0.5)).any()  # mid-grey margins, not only dark or bright ones
    assert (spread > 0.02).any() and (spread < 1e-6).any()  # grainy margins and flat ones


ALL_ON = AugmentSettings(
    border_p=1, letterbox_p=1, intensity_p=1, acquisition_p=1, marks_p=1, pathology_p=1, gas_bubble_p=1, clean_p=0.5
)


def test_draws_come_only_from_the_generator_given() -> None:
    """A seeded run is repeatable and leaves torch's global random stream alone, with every group on."""
    images, masks, valid = lungs(4, 32)
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    a = augment_batch(images, masks, valid, ALL_ON, torch.Generator().manual_seed(8))
    assert torch.equal(torch.random.get_rng_state(), before)
    b = augment_batch(images, masks, valid, ALL_ON, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("off", ["pathology_p", "gas_bubble_p", "intensity_p", "acquisition_p"])
def test_a_group_switched_off_draws_nothing(off: str) -> None:
    """The documented order, opacities, gastric bubble, framing, intensity, acquisition, marks, with one group at 0:
    the other groups get the same draws as if the group did not exist (switching one off changes no other)."""
    from cxrseg.augment import acquisition

    images, masks, valid = lungs(4, 48)
    cfg = AugmentSettings(pathology_p=1, gas_bubble_p=1, intensity_p=1, acquisition_p=1, marks_p=1, letterbox_p=1)
    cfg = cfg.model_copy(update={off: 0.0})
    out, out_masks, out_valid = augment_batch(images, masks, valid, cfg, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    expected = images
    if cfg.pathology_p:
        expected = add_opacities(expected, masks, valid, 1.0, g)
    if cfg.gas_bubble_p:
        expected = add_gas_bubbles(expected, masks, valid, 1.0, g)
    expected, expected_masks, expected_valid = frame(expected, masks, valid, cfg, g)
    if cfg.intensity_p:
        expected = intensity(expected, expected_valid, cfg, g)
    if cfg.acquisition_p:
        expected = acquisition(expected, cfg, g)
    expected = burn_in_marks(expected, expected_valid, 1.0, g)
    assert torch.equal(out, expected * expected_valid)
    assert torch.equal(out_masks, expected_masks) and torch.equal(out_valid, expected_valid)


def test_padding_is_black_and_every_pixel_a_grey_level() -> None:
    images, masks, valid = lungs(8, 48)
    cfg = AugmentSettings(zoom_min=0.5, border_p=0, letterbox_p=1, intensity_p=1, acquisition_p=1)
    cfg = cfg.model_copy(update={"zoom_max": 0.6})
    out, out_masks, out_valid = augment_batch(images, masks, valid, cfg, torch.Generator().manual_seed(6))
    assert (out_valid == 0).float().mean() > 0.3  # much padding ...
    assert torch.all(out[out_valid == 0] == 0)  # ... all of it black
    assert out.isfinite().all() and out.min() >= 0 and out.max() <= 1
    assert (out_masks <= out_valid).all()


def test_the_ignored_area_moves_with_the_lung_and_never_shrinks() -> None:
    """A second mask channel (pixels left out of the loss) is warped with the lung, kept wherever a pixel touches it,
    and is 0 in what the warp brings in from outside the film, even where the margin is drawn as film."""
    images, masks, valid = lungs(4, 32)
    both = torch.cat([masks, masks], dim=1)  # the ignored area is the lung itself
    cfg = OFF.model_copy(update={"rotate_degrees": 20, "zoom_min": 0.6, "zoom_max": 0.7, "border_p": 1})
    _, out_masks, out_valid = frame(images, both, valid, cfg, torch.Generator().manual_seed(1))
    assert out_masks.shape == both.shape and set(out_masks.unique().tolist()) <= {0.0, 1.0}
    lung, ignored = out_masks[:, :1], out_masks[:, 1:]
    assert (ignored >= lung).all() and ignored.sum() > lung.sum()  # wherever a pixel touches it
    assert torch.equal(out_valid, valid)  # the margin is film ...
    assert ignored[:, :, :3, :3].sum() == 0 and ignored[:, :, -3:, -3:].sum() == 0  # ... but not ignored


def margins(n: int = 300, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n films shrunk to half size inside margins drawn as film: (framed films, margin levels, margin spreads)."""
    images = torch.full((n, 1, 16, 16), 0.5)
    half = OFF.model_copy(update={"zoom_min": 0.5, "zoom_max": 0.5, "border_p": 1})
    out, _, _ = frame(
        images, torch.zeros_like(images), torch.ones_like(images), half, torch.Generator().manual_seed(seed)
    )
    band = out[:, 0, :3].flatten(1)  # the top three rows lie outside the shrunk film
    return out, band.mean(1), band.std(1)


def test_zoom_out_margins_are_mostly_dark_any_grey_up_to_white_and_finely_grainy() -> None:
    out, levels, spread = margins()
    assert out.min() >= 0 and out.max() <= 1
    flat = levels[spread == 0]
    assert len(flat) > 100  # about half are flat
    assert flat.median() < 0.25 and flat.max() > 0.9  # mostly dark, some nearly white ...
    assert (flat >= 0.999).float().mean() < 0.02  # ... but not stuck at white
    grainy = spread[spread > 0]
    assert grainy.max() < 0.15  # a photo's grain, not salt and pepper


def test_filling_the_margin_leaves_the_film_inside_it() -> None:
    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    half = OFF.model_copy(update={"zoom_min": 0.5, "zoom_max": 0.5})
    framed = {
        p: frame(
            images,
            torch.zeros_like(images),
            torch.ones_like(images),
            half.model_copy(update={"border_p": p}),
            torch.Generator().manual_seed(2),
        )[0]
        for p in (0, 1)
    }
    assert torch.equal(framed[0][..., 5:11, 5:11], framed[1][..., 5:11, 5:11])  # the shrunk film itself
    assert not torch.equal(framed[0][..., :3, :], framed[1][..., :3, :])  # its margin


def test_letterbox_bands_are_centred_on_average_and_either_way_round() -> None:
    images = torch.ones(400, 1, 32, 32)
    cfg = OFF.model_copy(update={"letterbox_p": 1})
    _, _, out_valid = frame(images, torch.zeros_like(images), images, cfg, torch.Generator().manual_seed(9))
    blank_rows = (out_valid[:, 0].amax(2) == 0).float()  # (N, S): rows without any valid pixel
    blank_cols = (out_valid[:, 0].amax(1) == 0).float()
    by_rows = blank_rows.sum(1) > 0
    assert 150 < int(by_rows.sum()) < 250  # top and bottom bands about as often as left and right ones
    lines = torch.where(by_rows.view(-1, 1), blank_rows, blank_cols)
    assert (lines[:, 0] * lines[:, -1]).mean() > 0.7  # mostly both sides blanked ...
    first, last = lines[:, :16].sum(1), lines[:, 16:].sum(1)
    assert abs(float((first - last).mean())) < 0.7  # ... as much on either side, on average


def ramp(n: int, size: int) -> torch.Tensor:
    """n films that are one grey ramp from black (left) to white (right)."""
    return (torch.arange(size, dtype=torch.float32) / (size - 1)).expand(n, 1, size, size).clone()


def test_gamma_spreads_over_its_log_range_both_ways() -> None:
    """`gamma` is the log-range of the gamma: the films only the gamma changed are x ** g, log g within +-gamma."""
    images = ramp(200, 64)
    cfg = OFF.model_copy(update={"intensity_p": 1, "gamma": 0.6})
    out = intensity(images, torch.ones_like(images), cfg, torch.Generator().manual_seed(1))
    assert out.min() >= 0 and out.max() <= 1
    x, y = images[0, 0, 0], out[:, 0, 0]
    grey = (x > 0.1) & (x < 0.9)
    power = y[:, grey].log() / x[grey].log()  # the exponent, column by column
    gamma_only = (power.amax(1) - power.amin(1)) < 1e-3  # one exponent for the whole film
    assert gamma_only.sum() > 30
    log_gamma = power[gamma_only, 0].log()
    assert log_gamma.abs().max() <= 0.6 + 1e-4
    assert log_gamma.min() < -0.4 and log_gamma.max() > 0.4  # brighter and darker films


def test_gamma_zero_leaves_the_films_no_other_remap_touched() -> None:
    """With gamma 0 the gamma is 1; the other remaps (window p/3, local contrast p/2, equalisation p/4) together
    leave (2/3)(1/2)(3/4), a quarter of the films, as they were."""
    images = torch.rand(1000, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = OFF.model_copy(update={"intensity_p": 1, "gamma": 0.0})
    out = intensity(images, torch.ones_like(images), cfg, torch.Generator().manual_seed(1))
    unchanged = sum(torch.equal(out[i], images[i]) for i in range(1000))
    assert 215 <= unchanged <= 285  # 250, standard deviation 14


def test_sigmoid_window_keeps_black_and_white_and_steepens_mid_greys() -> None:
    """A window film maps black to black and white to white through an S-curve that is steepest in the mid-greys."""
    images = ramp(200, 64)
    cfg = OFF.model_copy(update={"intensity_p": 1, "gamma": 0.0})
    y = intensity(images, torch.ones_like(images), cfg, torch.Generator().manual_seed(1))[:, 0, 0]
    x = images[0, 0, 0]
    ends_kept = (y[:, 0].abs() < 1e-5) & ((y[:, -1] - 1).abs() < 1e-5)
    rising = (y[:, 1:] > y[:, :-1]).all(1)
    middle_moved = (y - x)[:, 16:48].abs().amax(1) > 0.02  # not the ramp, nor a local contrast at its ends
    window = ends_kept & rising & middle_moved
    assert window.sum() >= 10
    slope = (y[window, 1:] - y[window, :-1]) * 63
    steepest = (slope.argmax(1).float() + 0.5) / 63
    assert steepest.min() > 0.28 and steepest.max() < 0.72  # centred on a mid-grey ...
    assert slope.amax(1).min() > 1.15  # ... and steeper there than the ramp


def test_noise_is_a_share_of_films_within_its_level_and_grows_with_brightness() -> None:
    """Vertical stripes of black, dark grey, light grey and white: low resolution and blur keep every column flat,
    so any difference down a column is the noise, added to half the films at sigma level * (0.5 + grey)."""
    from cxrseg.augment import acquisition

    stripes = torch.tensor([0.0, 0.2, 0.6, 1.0]).repeat_interleave(8).expand(300, 1, 32, 32).clone()
    cfg = OFF.model_copy(update={"acquisition_p": 1})
    out = acquisition(stripes, cfg, torch.Generator().manual_seed(2))
    assert out.min() >= 0 and out.max() <= 1
    down = out[:, 0, 1:] - out[:, 0, :-1]  # (N, 31, 32)
    noisy = down.abs().amax((1, 2)) > 1e-4  # beyond rounding
    assert 120 <= int(noisy.sum()) <= 180  # half of 300 (standard deviation 8.7)
    sigma = {
        grey: down[noisy][:, :, cols].std((1, 2)) / math.sqrt(2) for grey, cols in ((0.2, [11, 12]), (0.6, [19, 20]))
    }
    dark_level, light_level = sigma[0.2] / 0.7, sigma[0.6] / 1.1
    assert 0.85 < float((light_level / dark_level).median()) < 1.15  # the same level at both greys
    level = (dark_level + light_level) / 2
    assert level.min() > 0.005 and level.max() < 0.09  # within 0.01-0.07, give or take the estimate
    assert level.min() < 0.02 and level.max() > 0.055  # faint and strong noise
