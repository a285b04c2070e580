"""Anime2Sketch generator (Xiang et al., 2021): the pix2pix U-Net with 8 levels, InstanceNorm, tanh output.

Each level is `model` = Sequential(down..., inner level, up...) and returns concat(input, up(...)), so the
weights nest as `model.model.1.model.3.model.1...` (index 1 = down conv, 3 = inner level, 5 = up conv).
"""
from __future__ import annotations

import torch
from torch import nn


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels)  # no affine parameters, no running statistics: every conv has a bias


def _down(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 4, stride=2, padding=1)


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)


class SkipLevel(nn.Module):
    """LeakyReLU(0.2) → 4×4 stride-2 conv → IN → inner level → ReLU → 4×4 stride-2 transposed conv → IN,
    concatenated with the input. The innermost level (inner=None) has no norm after its down conv."""

    def __init__(self, outer: int, inner: int, inner_level: nn.Module | None):
        super().__init__()
        if inner_level is None:
            layers = [nn.LeakyReLU(0.2), _down(outer, inner), nn.ReLU(), _up(inner, outer), _norm(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), _down(outer, inner), _norm(inner), inner_level,
                      nn.ReLU(), _up(2 * inner, outer), _norm(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.model(x)], 1)


class OuterLevel(nn.Module):
    """4×4 stride-2 conv 3→64 → the 7 inner levels → ReLU → transposed conv 128→1 → tanh (no skip)."""

    def __init__(self, inner_level: nn.Module):
        super().__init__()
        self.model = nn.Sequential(_down(3, 64), inner_level, nn.ReLU(), _up(128, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class AnimeUNet(nn.Module):
    """(N, 3, H, W) RGB in [-1, 1] -> (N, 1, H, W) in (-1, 1), +1 = background; H, W multiples of 256."""

    def __init__(self):
        super().__init__()
        level = SkipLevel(512, 512, None)  # 1/256 scale
        for _ in range(3):
            level = SkipLevel(512, 512, level)
        for outer in (256, 128, 64):
            level = SkipLevel(outer, 2 * outer, level)
        self.model = OuterLevel(level)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
