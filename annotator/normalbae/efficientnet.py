"""EfficientNet-B5 in its TensorFlow-ported form (Tan & Le 2019, "EfficientNet"; AdvProp weights), used as
the Normal BAE encoder.

TensorFlow conventions kept so the TF-trained weights behave as trained: BatchNorm eps 1e-3, "same"
padding (stride-2 convolutions pad asymmetrically, more at the bottom/right, computed from the input
size), SiLU activations, squeeze-excitation sized from the block's *input* width. Attribute names
(`conv_stem`, `bn1`, `blocks.<stage>.<index>.conv_pw`, `se.conv_reduce`, ...) are the checkpoint's.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

BN_EPS = 1e-3
SE_RATIO = 0.25
STEM_WIDTH = 48  # 32 × 1.6, rounded to a multiple of 8
HEAD_WIDTH = 2048  # 1280 × 1.6
# One row per stage: (repeats, depthwise kernel, first stride, expansion, output width); the B0 table
# scaled by width 1.6 and depth 2.2 (repeats rounded up, widths to multiples of 8).
STAGES = (
    (3, 3, 1, 1, 24),
    (5, 3, 2, 6, 40),
    (5, 5, 2, 6, 64),
    (7, 3, 2, 6, 128),
    (7, 5, 1, 6, 176),
    (9, 5, 2, 6, 304),
    (3, 3, 1, 6, 512),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME": output ceil(size / stride); the odd pixel of padding goes after (bottom/right)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF "SAME" padding computed from the input size (used for the stride-2 convs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return F.conv2d(F.pad(x, [left, right, top, bottom]), self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


def conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """Bias-free conv with TF "SAME" padding: symmetric (static) at stride 1, dynamic at stride 2."""
    if stride == 1:
        return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False)
    return Conv2dSame(cin, cout, kernel, stride=stride, groups=groups, bias=False)


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class SqueezeExcite(nn.Module):
    """Channel gate: global mean -> 1×1 conv (reduce) -> SiLU -> 1×1 conv (expand) -> sigmoid."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class DepthwiseSeparable(nn.Module):
    """Stage-0 block (expansion 1): depthwise conv, BN, SiLU, SE, 1×1 projection, BN (+ input)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        self.conv_dw = conv(cin, cin, kernel, stride, groups=cin)
        self.bn1 = bn(cin)
        self.se = SqueezeExcite(cin, round(cin * SE_RATIO))
        self.conv_pw = conv(cin, cout, 1)
        self.bn2 = bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.se(F.silu(self.bn1(self.conv_dw(x))))))
        return y + x if self.residual else y


class InvertedResidual(nn.Module):
    """MBConv: 1×1 expansion, BN, SiLU, depthwise conv, BN, SiLU, SE, 1×1 projection, BN (+ input)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.conv_pw = conv(cin, mid, 1)
        self.bn1 = bn(mid)
        self.conv_dw = conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = bn(mid)
        self.se = SqueezeExcite(mid, round(cin * SE_RATIO))  # reduced width from the block input
        self.conv_pwl = conv(mid, cout, 1)
        self.bn3 = bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn1(self.conv_pw(x)))
        y = self.se(F.silu(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.residual else y


def make_stage(cin: int, repeats: int, kernel: int, stride: int, expansion: int, cout: int) -> nn.Sequential:
    blocks = []
    for i in range(repeats):
        block_in, block_stride = (cin, stride) if i == 0 else (cout, 1)
        if expansion == 1:
            blocks.append(DepthwiseSeparable(block_in, cout, kernel, block_stride))
        else:
            blocks.append(InvertedResidual(block_in, cout, kernel, block_stride, expansion))
    return nn.Sequential(*blocks)


class EfficientNetB5(nn.Module):
    """Stem (3×3 stride-2 conv, BN, SiLU), seven stages of blocks, 1×1 head conv to 2048 + BN.

    `forward` returns the features the Normal BAE decoder reads: stages 0, 1, 2, 4 (strides 2, 4, 8,
    16; 24, 40, 64, 176 channels) and the head conv output (stride 32, 2048 channels) taken *before*
    its BatchNorm and activation, as the checkpoint's decoder was trained on it. `bn2` is kept only
    because the checkpoint holds its tensors; it never runs.
    """

    def __init__(self):
        super().__init__()
        self.conv_stem = conv(3, STEM_WIDTH, 3, stride=2)
        self.bn1 = bn(STEM_WIDTH)
        stages, cin = [], STEM_WIDTH
        for repeats, kernel, stride, expansion, cout in STAGES:
            stages.append(make_stage(cin, repeats, kernel, stride, expansion, cout))
            cin = cout
        self.blocks = nn.Sequential(*stages)
        self.conv_head = conv(cin, HEAD_WIDTH, 1)
        self.bn2 = bn(HEAD_WIDTH)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = F.silu(self.bn1(self.conv_stem(x)))
        taps = []
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in (0, 1, 2, 4):
                taps.append(x)
        return (*taps, self.conv_head(x))
