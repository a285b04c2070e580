"""ControlNetHED: the VGG-style soft-edge network of ControlNet's HED annotator (RGB, 0..255 input)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# (input channels, output channels, number of 3×3 convs) of block1..block5
BLOCKS = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


class VGGBlock(nn.Module):
    """3×3 conv + ReLU stack, optionally after a 2×2 max-pool, with a 1×1 side output."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int):
        super().__init__()
        widths = [in_channels] + [out_channels] * n_convs
        self.convs = nn.Sequential(*(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:])))
        self.projection = nn.Conv2d(out_channels, 1, 1)

    def forward(self, x: torch.Tensor, pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if pool:
            x = F.max_pool2d(x, 2, 2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class ControlNetHED(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))  # learned offset, subtracted from raw pixels
        for i, (cin, cout, n) in enumerate(BLOCKS, start=1):
            setattr(self, f"block{i}", VGGBlock(cin, cout, n))

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) RGB in 0..255 -> five side-output logit maps at 1, 1/2, 1/4, 1/8, 1/16 scale."""
        h = rgb - self.norm
        sides = []
        for i in range(1, len(BLOCKS) + 1):
            h, side = getattr(self, f"block{i}")(h, pool=i > 1)
            sides.append(side)
        return sides
