"""Line-drawing generator of "Learning to generate line drawings that convey geometry and semantics"
(Chan, Durand, Isola, CVPR 2022): a ResNet-style image-to-image network with sigmoid output.

Sequential indices skip the parameter-free slots (padding, InstanceNorm, ReLU), which is why the
weight names read `model0.1`, `model1.3`, `model2.0.conv_block.5`, ...
"""
from __future__ import annotations

import torch
from torch import nn


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels)  # no affine parameters, no running statistics


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) in (0, 1): 1 = background, 0 = line; H, W multiples of 4.

    7×7 conv 3→64, two stride-2 3×3 convs (64→128→256), residual blocks at 256, two stride-2 transposed
    convs (256→128→64), 7×7 conv 64→1; InstanceNorm + ReLU after every conv but the last.
    """

    def __init__(self, residual_blocks: int = 3):
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), _norm(64), nn.ReLU())
        self.model1 = nn.Sequential(
            nn.Conv2d(64, 128, 3, stride=2, padding=1), _norm(128), nn.ReLU(),
            nn.Conv2d(128, 256, 3, stride=2, padding=1), _norm(256), nn.ReLU(),
        )
        self.model2 = nn.Sequential(*(ResidualBlock(256) for _ in range(residual_blocks)))
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), _norm(128), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), _norm(64), nn.ReLU(),
        )
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))
