"""MobileV2_MLSD_Large: M-LSD line-segment network (truncated MobileNetV2 + U-shaped decoder).

Attribute names follow the official `mlsd_large_512_fp32.pth` keys.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# MobileNetV2 inverted-residual stages (expansion t, channels c, repeats n, first stride s), cut after 96
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
TAPS = (1, 3, 6, 10, 13)  # feature indices whose outputs feed the decoder (16/24/32/64/96 channels)


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        # Stride-2 convs use TensorFlow "SAME" padding (one extra pixel right/bottom, none left/top),
        # as the weights were trained in TF; symmetric padding would shift every feature map.
        padding = 0 if stride == 2 else (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [ConvBNReLU6(cin, hidden, kernel=1)] if expansion != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Features(nn.Module):
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(4, 32, stride=2)]  # 4 inputs: RGB + a constant channel
        cin = 32
        for t, c, n, s in STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
        return taps


def conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class Merge(nn.Module):
    """1×1 projections of a skip tap and the deeper map (upsampled ×2 if needed), concatenated."""

    def __init__(self, skip_channels: int, deep_channels: int, upsample: bool = True):
        super().__init__()
        self.conv1 = conv_bn_relu(deep_channels, 64, 1)
        self.conv2 = conv_bn_relu(skip_channels, 64, 1)
        self.upsample = upsample

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = self.conv1(deep)
        if self.upsample:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(skip), deep), dim=1)


class Refine(nn.Module):
    """Residual 3×3 conv on the 128 merged channels, then 3×3 conv down to 64."""

    def __init__(self):
        super().__init__()
        self.conv1 = conv_bn_relu(128, 128, 3)
        self.conv2 = conv_bn_relu(128, 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = conv_bn_relu(64, 64, 3, dilation=5)
        self.conv2 = conv_bn_relu(64, 64, 3)
        self.conv3 = nn.Conv2d(64, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class MobileV2MLSDLarge(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = MobileNetV2Features()
        self.block15 = Merge(64, 96, upsample=False)
        self.block16 = Refine()
        self.block17 = Merge(32, 64)
        self.block18 = Refine()
        self.block19 = Merge(24, 64)
        self.block20 = Refine()
        self.block21 = Merge(16, 64)
        self.block22 = Refine()
        self.block23 = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 4, H, W) in [-1, 1], H and W multiples of 16 -> (N, 9, H/2, W/2): centre logits,
        4 endpoint displacements, 4 unused maps."""
        c1, c2, c3, c4, c5 = self.backbone(x)
        x = self.block16(self.block15(c4, c5))
        x = self.block18(self.block17(c3, x))
        x = self.block20(self.block19(c2, x))
        x = self.block22(self.block21(c1, x))
        # The trained head has 16 outputs; only the last 9 are the line maps.
        return self.block23(x)[:, 7:]
