"""mmseg's UPerHead (decode head) and FCNHead (auxiliary head, training only) in plain PyTorch."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 150
CHANNELS = 512
POOL_SCALES = (1, 2, 3, 6)


def resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvModule(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class UPerHead(nn.Module):
    """Pyramid pooling on the deepest map + FPN top-down fusion -> (N, 150, H/4, W/4) logits."""

    def __init__(self, in_channels=(64, 128, 320, 512)):
        super().__init__()
        self.conv_seg = nn.Conv2d(CHANNELS, NUM_CLASSES, 1)  # dropout 0.1 before it: inactive at test
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], CHANNELS, 1)) for s in POOL_SCALES
        )
        self.bottleneck = ConvModule(in_channels[-1] + len(POOL_SCALES) * CHANNELS, CHANNELS, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, CHANNELS, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(CHANNELS, CHANNELS, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * CHANNELS, CHANNELS, 3)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        deepest = features[-1]
        pooled = [resize(m(deepest), deepest.shape[2:]) for m in self.psp_modules]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        laterals.append(self.bottleneck(torch.cat([deepest, *pooled], 1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down, each level on the updated deeper one
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        outs = [outs[0]] + [resize(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.conv_seg(self.fpn_bottleneck(torch.cat(outs, 1)))


class FCNHead(nn.Module):
    """One 3×3 ConvModule on stage 3 + classifier; present in the weight file, unused at inference."""

    def __init__(self, cin: int = 320, channels: int = 256):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, NUM_CLASSES, 1)
        self.convs = nn.Sequential(ConvModule(cin, channels, 3))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.convs(features[2]))
