"""Pixel difference convolutions (Su et al., "Pixel Difference Networks for Efficient Edge Detection", ICCV 2021).

A 3×3 kernel w is applied to differences of pixel pairs instead of to raw pixels; each variant is an
ordinary convolution with a kernel derived from w at run time (the stored weights stay plain 3×3):
* "cv": vanilla, sum_i w_i·x_i.
* "cd" (central): sum_i w_i·(x_i - x_centre) = conv(x, w) - conv(x, sum(w) as a 1×1 kernel).
* "ad" (angular): sum_i w_i·(x_i - x_next(i)), next = the clockwise neighbour on the 3×3 ring.
* "rd" (radial): a 5×5 kernel pairing each tap of the outer ring (stride 2) with the inner-ring tap on
  the same ray: outer = +w_k, inner = -w_k, centre 0.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

OPS = ("cv", "cd", "ad", "rd")
# Flattened 3×3 index of each tap's clockwise neighbour (0 1 2 / 3 4 5 / 6 7 8; the centre maps to itself).
CLOCKWISE = [3, 0, 1, 6, 4, 2, 7, 8, 5]
# 5×5 positions of the outer ring (stride 2) and of the inner ring, in the order of the 3×3 taps 1..8.
RD_OUTER = [0, 2, 4, 10, 14, 20, 22, 24]
RD_INNER = [6, 7, 8, 11, 13, 16, 17, 18]


def radial_kernel(weight: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) -> (O, I, 5, 5) radial-difference kernel.

    The original pairs the ring positions with flattened taps 1..8, so tap 0 (top-left) is never used and
    the centre tap 4 is; kept as is because the published weights were trained with it."""
    out_ch, in_ch = weight.shape[:2]
    taps = weight.reshape(out_ch, in_ch, 9)[:, :, 1:]
    kernel = weight.new_zeros(out_ch, in_ch, 25)
    kernel[:, :, RD_OUTER] = taps
    kernel[:, :, RD_INNER] = -taps
    return kernel.reshape(out_ch, in_ch, 5, 5)


class PixelDifferenceConv2d(nn.Module):
    """3×3 convolution (stride 1, padding 1) of type `op` in OPS; `weight` is (O, I/groups, 3, 3)."""

    def __init__(self, op: str, in_channels: int, out_channels: int, groups: int = 1, bias: bool = False):
        super().__init__()
        if op not in OPS:
            raise ValueError(f"unknown pixel difference op {op!r}; use one of {OPS}")
        self.op, self.groups = op, groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 3, 3))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(self.weight[0].numel()), 1 / math.sqrt(self.weight[0].numel()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, groups = self.weight, self.groups
        if self.op == "cv":
            return F.conv2d(x, w, self.bias, padding=1, groups=groups)
        if self.op == "cd":
            centre = F.conv2d(x, w.sum(dim=(2, 3), keepdim=True), groups=groups)
            return F.conv2d(x, w, self.bias, padding=1, groups=groups) - centre
        if self.op == "ad":
            flat = w.reshape(w.shape[0], w.shape[1], 9)
            return F.conv2d(x, (flat - flat[:, :, CLOCKWISE]).reshape(w.shape), self.bias, padding=1, groups=groups)
        return F.conv2d(x, radial_kernel(w), self.bias, padding=2, groups=groups)
