"""PiDiNet (Su et al., ICCV 2021), the "table 5" model: width 60, pixel-difference layout "carv4",
compact dilation modules (CDCM, 24 channels) and compact spatial attention (CSAM) on the side branches."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from annotator.pidinet.pdc import PixelDifferenceConv2d

# "carv4": layer i of 16 uses central, angular, radial, vanilla differences in turn.
CARV4 = ("cd", "ad", "rd", "cv") * 4
WIDTH = 60
SIDE_WIDTH = 24
DILATIONS = (5, 7, 9, 11)


class PDCBlock(nn.Module):
    """[2×2 max-pool] → depthwise 3×3 pixel-difference conv → ReLU → 1×1 conv, plus a shortcut
    (identity, or a 1×1 conv with bias after the pool when the block halves the resolution)."""

    def __init__(self, op: str, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.conv1 = PixelDifferenceConv2d(op, in_channels, in_channels, groups=in_channels)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.max_pool2d(x, 2, 2)
        y = self.conv2(F.relu(self.conv1(x)))
        return y + (self.shortcut(x) if self.stride > 1 else x)


class CDCM(nn.Module):
    """Compact dilation convolution module: ReLU → 1×1 conv → sum of four dilated 3×3 convs."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1)
        for i, d in enumerate(DILATIONS, start=1):
            setattr(self, f"conv2_{i}", nn.Conv2d(out_channels, out_channels, 3, dilation=d, padding=d, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(x))
        return self.conv2_1(x) + self.conv2_2(x) + self.conv2_3(x) + self.conv2_4(x)


class CSAM(nn.Module):
    """Compact spatial attention module: x · sigmoid(3×3 conv(1×1 conv(ReLU(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class MapReduce(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PiDiNet(nn.Module):
    """(N, 3, H, W) BGR in [0, 1] -> five (N, 1, H, W) edge probabilities: the four side outputs (from
    strides 1, 2, 4, 8) and, last, their fusion. Any H, W: pooling floors, sides are resized back."""

    def __init__(self):
        super().__init__()
        self.init_block = PixelDifferenceConv2d(CARV4[0], 3, WIDTH)
        stages = ((WIDTH, WIDTH, 3), (WIDTH, 2 * WIDTH, 4), (2 * WIDTH, 4 * WIDTH, 4), (4 * WIDTH, 4 * WIDTH, 4))
        layer = 1
        for s, (cin, cout, blocks) in enumerate(stages, start=1):
            for b in range(1, blocks + 1):
                stride = 2 if s > 1 and b == 1 else 1
                setattr(self, f"block{s}_{b}", PDCBlock(CARV4[layer], cin if b == 1 else cout, cout, stride))
                layer += 1
        self.stage_blocks = tuple(
            tuple(f"block{s}_{b}" for b in range(1, n + 1)) for s, (_, _, n) in enumerate(stages, start=1)
        )
        side_widths = [cout for _, cout, _ in stages]
        # Registration order = the checkpoint's key order: reduces, attentions, dilations.
        self.conv_reduces = nn.ModuleList(MapReduce(SIDE_WIDTH) for _ in side_widths)
        self.attentions = nn.ModuleList(CSAM(SIDE_WIDTH) for _ in side_widths)
        self.dilations = nn.ModuleList(CDCM(c, SIDE_WIDTH) for c in side_widths)
        self.classifier = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        height, width = x.shape[2:]
        h = self.init_block(x)
        sides = []
        for i, names in enumerate(self.stage_blocks):
            for name in names:
                h = getattr(self, name)(h)
            side = self.conv_reduces[i](self.attentions[i](self.dilations[i](h)))
            sides.append(F.interpolate(side, (height, width), mode="bilinear", align_corners=False))
        sides.append(self.classifier(torch.cat(sides, dim=1)))
        return [torch.sigmoid(s) for s in sides]
