"""The training loss: its value on inputs worked out by hand, the sign of its gradient, and padding ignored."""

from __future__ import annotations

import math

import pytest
import torch

from cxrseg.losses import segmentation_loss, soft_dice_loss

LOGITS = [2.0, -1.0, 0.0, 3.0]
TARGETS = [1.0, 0.0, 1.0, 0.0]


def as_image(values: list[float]) -> torch.Tensor:
    """(1, 1, 2, 2) tensor of four pixel values."""
    return torch.tensor(values).reshape(1, 1, 2, 2)


def by_hand(logits: list[float], targets: list[float], eps: float = 1.0) -> tuple[float, float]:
    """(mean BCE-with-logits, 1 - soft Dice) of one image written out pixel by pixel."""
    bce = sum(math.log1p(math.exp(x)) - t * x for x, t in zip(logits, targets, strict=True)) / len(logits)
    probs = [1 / (1 + math.exp(-x)) for x in logits]
    intersection = sum(p * t for p, t in zip(probs, targets, strict=True))
    return bce, 1 - (2 * intersection + eps) / (sum(probs) + sum(targets) + eps)


def test_value_is_bce_plus_weighted_soft_dice() -> None:
    bce, dice = by_hand(LOGITS, TARGETS)
    # on paper: softplus(2) - 2, softplus(-1), ln 2, softplus(3) -> 4.1819 / 4; Dice 3.7616 / 5.6023
    assert bce == pytest.approx(1.0455, abs=1e-4) and dice == pytest.approx(0.3286, abs=1e-4)
    for weight in (0.0, 1.0, 2.5):
        loss = segmentation_loss(as_image(LOGITS), as_image(TARGETS), dice_weight=weight)
        assert float(loss) == pytest.approx(bce + weight * dice, rel=1e-6)
    assert float(soft_dice_loss(as_image(LOGITS), as_image(TARGETS))) == pytest.approx(dice, rel=1e-6)


def test_all_zero_logits() -> None:
    """p = 0.5 everywhere: BCE is ln 2; one lung pixel of four gives Dice (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5."""
    loss = segmentation_loss(torch.zeros(1, 1, 2, 2), as_image([1.0, 0.0, 0.0, 0.0]), dice_weight=1.0)
    assert float(loss) == pytest.approx(math.log(2) + 0.5, rel=1e-6)


def test_soft_dice_is_a_mean_over_images_not_pooled() -> None:
    logits = torch.cat([as_image(LOGITS), torch.full((1, 1, 2, 2), 8.0)])
    targets = torch.cat([as_image(TARGETS), torch.ones(1, 1, 2, 2)])
    (_, first), (_, second) = by_hand(LOGITS, TARGETS), by_hand([8.0] * 4, [1.0] * 4)
    assert float(soft_dice_loss(logits, targets)) == pytest.approx((first + second) / 2, rel=1e-6)


def test_gradient_pushes_logits_towards_the_targets() -> None:
    logits = torch.tensor([[[[0.5, -0.5], [2.0, -2.0]]]], requires_grad=True)
    targets = as_image([1.0, 0.0, 0.0, 1.0])
    segmentation_loss(logits, targets, dice_weight=1.0).backward()
    grad = logits.grad.flatten()
    assert grad[0] < 0 and grad[3] < 0  # lung pixels: raising the logit lowers the loss
    assert grad[1] > 0 and grad[2] > 0  # background pixels: lowering the logit lowers the loss


def test_padding_pixels_do_not_change_the_loss_or_get_a_gradient() -> None:
    """An image padded into a wider square scores exactly like the image alone."""
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 1, 6, 4), (torch.rand(2, 1, 6, 4) > 0.5).float()
    alone = segmentation_loss(logits, targets, dice_weight=1.0)
    padded_logits = torch.cat([logits, 5 * torch.randn(2, 1, 6, 2)], dim=3).requires_grad_()
    padded_targets = torch.cat([targets, torch.ones(2, 1, 6, 2)], dim=3)
    valid = torch.cat([torch.ones(2, 1, 6, 4), torch.zeros(2, 1, 6, 2)], dim=3)
    loss = segmentation_loss(padded_logits, padded_targets, valid, dice_weight=1.0)
    assert loss.item() == pytest.approx(alone.item(), rel=1e-6)
    loss.backward()
    assert torch.all(padded_logits.grad[..., 4:] == 0) and torch.all(padded_logits.grad[..., :4] != 0)
    unweighted = segmentation_loss(padded_logits, padded_targets, dice_weight=1.0)
    assert unweighted.item() != pytest.approx(alone.item(), rel=1e-3)  # the padding would count without `valid`


def test_loss_is_float32_under_bf16_logits() -> None:
    loss = segmentation_loss(as_image(LOGITS).bfloat16(), as_image(TARGETS), dice_weight=1.0)
    assert loss.dtype == torch.float32


def test_hard_fraction_averages_the_cross_entropy_over_the_worst_pixels_only() -> None:
    """Per-pixel BCE of LOGITS/TARGETS: 0.1269, 0.3133, 0.6931, 3.0486; the worst half is the last two."""
    per_pixel = [math.log1p(math.exp(x)) - t * x for x, t in zip(LOGITS, TARGETS, strict=True)]
    worst_half = sum(sorted(per_pixel)[2:]) / 2
    assert worst_half == pytest.approx((math.log(2) + math.log1p(math.exp(3.0))) / 2)
    loss = segmentation_loss(as_image(LOGITS), as_image(TARGETS), dice_weight=0.0, hard_fraction=0.5)
    assert float(loss) == pytest.approx(worst_half, rel=1e-6)
    quarter = segmentation_loss(as_image(LOGITS), as_image(TARGETS), dice_weight=0.0, hard_fraction=0.25)
    assert float(quarter) == pytest.approx(max(per_pixel), rel=1e-6)
    _, dice = by_hand(LOGITS, TARGETS)
    both = segmentation_loss(as_image(LOGITS), as_image(TARGETS), dice_weight=1.0, hard_fraction=0.5)
    assert float(both) == pytest.approx(worst_half + dice, rel=1e-6)  # the Dice term still sees every pixel


def test_hard_fraction_one_is_the_plain_mean() -> None:
    torch.manual_seed(1)
    logits, targets = torch.randn(2, 1, 5, 5), (torch.rand(2, 1, 5, 5) > 0.5).float()
    assert float(segmentation_loss(logits, targets, hard_fraction=1.0)) == float(segmentation_loss(logits, targets))


def test_hard_pixels_are_chosen_among_the_scored_ones_and_only_they_get_a_gradient() -> None:
    """Padding holds the largest losses here; it is never picked, and the share is of the scored pixels."""
    logits = torch.cat([as_image(LOGITS), torch.full((1, 1, 2, 2), -9.0)], dim=3).requires_grad_()
    targets = torch.cat([as_image(TARGETS), torch.ones(1, 1, 2, 2)], dim=3)
    valid = torch.cat([torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)], dim=3)
    loss = segmentation_loss(logits, targets, valid, dice_weight=0.0, hard_fraction=0.5)
    assert loss.item() == pytest.approx((math.log(2) + math.log1p(math.exp(3.0))) / 2, rel=1e-6)
    loss.backward()
    grad = logits.grad.reshape(2, 4)  # rows: logits 2, -1 | padding; 0, 3 | padding
    assert torch.all(grad[:, 2:] == 0)  # padding
    assert grad[0, 0] == 0 and grad[0, 1] == 0  # the two easy pixels (logit 2 on lung, -1 on background)
    assert grad[1, 0] < 0 and grad[1, 1] > 0  # the hard ones: lung at 0 pushed up, background at 3 down
