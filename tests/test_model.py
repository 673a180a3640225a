"""U-Net shapes, gradients and input checks."""

from __future__ import annotations

import pytest
import torch

from cxrseg.model import UNet


@pytest.mark.parametrize(("depth", "size"), [(1, 8), (2, 32), (4, 48)])
def test_logits_have_input_size(depth: int, size: int) -> None:
    model = UNet(base_channels=4, depth=depth)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 1, size, size)


def test_channels_double_per_level_and_skips_concatenate() -> None:
    model = UNet(base_channels=8, depth=3)
    assert [e[0].out_channels for e in model.encoders] == [8, 16, 32, 64]
    assert [d[0].in_channels for d in model.decoders] == [16, 32, 64]  # skip + upsampled


def test_every_parameter_gets_a_gradient() -> None:
    model = UNet(base_channels=4, depth=2)
    model(torch.randn(2, 1, 16, 16)).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_indivisible_input_says_how_to_pad() -> None:
    with pytest.raises(ValueError, match="Consider padding to 32x32"):
        UNet(base_channels=4, depth=3)(torch.randn(1, 1, 30, 30))
