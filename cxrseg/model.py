"""U-Net (Ronneberger et al. 2015) in pure torch: returns logits, does no I/O."""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Sequential):
    """Two padded 3x3 conv -> batch norm -> ReLU layers; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with a contracting path, an expanding path and concatenated skip connections.

    Args:
        in_channels: input channels (1 for grayscale X-rays).
        out_channels: output logit channels (1 for a binary lung mask).
        base_channels: channels of the first level; they double at every level down.
        depth: number of 2x2 max-pool steps; inputs must be divisible by 2**depth.

    Shape:
        input (N, in_channels, H, W) -> logits (N, out_channels, H, W).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.depth = depth
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            [DoubleConv(in_channels, widths[0])] + [DoubleConv(widths[i - 1], widths[i]) for i in range(1, depth + 1)]
        )
        self.pool = nn.MaxPool2d(2)
        self.upsamplers = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)]
        )
        self.decoders = nn.ModuleList([DoubleConv(2 * widths[i], widths[i]) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.depth
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"Expected height and width divisible by {factor}, got {tuple(x.shape[-2:])}. "
                f"Consider padding to {-(-x.shape[-2] // factor) * factor}x{-(-x.shape[-1] // factor) * factor}."
            )
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pool(x))  # (N, C*2^level, H/2^level, W/2^level)
            skips.append(x)
        x = skips.pop()  # bottleneck
        for level in reversed(range(self.depth)):
            x = self.upsamplers[level](x)  # (N, C*2^level, H/2^level, W/2^level)
            x = self.decoders[level](torch.cat([skips[level], x], dim=1))
        return self.head(x)
