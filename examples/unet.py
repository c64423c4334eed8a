"""A U-Net built from ``torch.nn`` (Ronneberger et al. 2015, with batch norm and padding),
the segmentation model of MONeT's benchmarks: ``monet profile examples.unet:unet --input
11x3x416x608``.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """Four 2x down-samplings (max pooling) and four up-samplings (transposed convolutions)
    with skip connections; ``width`` channels at the top, 16 * width at the bottom."""

    def __init__(self, in_channels: int = 3, classes: int = 2, width: int = 64):
        super().__init__()
        widths = [width * 2**i for i in range(5)]
        self.down = nn.ModuleList([double_conv(in_channels, widths[0])] + [
            double_conv(widths[i], widths[i + 1]) for i in range(4)])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                for i in reversed(range(4)))
        self.merge = nn.ModuleList(double_conv(2 * widths[i], widths[i])
                                   for i in reversed(range(4)))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def unet(batch: int = 11, height: int = 416, width: int = 608):
    """MONeT's U-Net benchmark input: ``batch`` RGB images of ``height`` x ``width``."""
    return UNet(), torch.randn(batch, 3, height, width)
