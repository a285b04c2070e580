"""Nearest-neighbour ×2 upsampling followed by a 3×3 convolution, computed without the upsampled image.

After a nearest ×2 upsampling, the 3×3 window of an output pixel covers only 2×2 distinct input pixels, and
which taps fall on which input pixel depends only on the output pixel's phase (row parity, column parity). Along
one axis, phase 0 sees input rows (i-1, i) with taps (w0, w1+w2) and phase 1 sees rows (i, i+1) with taps
(w0+w1, w2). So the pair is four 2×2 convolutions of the low-resolution input, one per phase, whose outputs are
interleaved: 16 instead of 36 multiply-adds per output pixel and channel pair, and no 4× larger intermediate.
The phase kernels are summed in float32 and rounded once, so in bfloat16 the result differs from the two-step
version only by rounding (the test holds both to float32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# TAPS[phase, input pixel, 3×3 tap]: which taps of one axis land on each of the two input pixels a phase sees.
TAPS = torch.tensor([[[1., 0., 0.], [0., 1., 1.]],
                     [[1., 1., 0.], [0., 0., 1.]]])


def phase_kernels(weight: Tensor) -> Tensor:
    """The (4·O)×I×2×2 kernels of phases (0,0), (0,1), (1,0), (1,1), in that order, for an O×I×3×3 kernel."""
    out_channels, in_channels = weight.shape[:2]
    taps = TAPS.to(weight.device)
    kernels = torch.einsum("ary,oiyx,bsx->aboirs", taps, weight.float(), taps)
    return kernels.reshape(4 * out_channels, in_channels, 2, 2).to(weight.dtype)


def upsample_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)` for a 3×3 `weight`,
    returned channels-last."""
    n, _, h, w = x.shape
    out_channels = weight.shape[0]
    kernels = phase_kernels(weight).contiguous(memory_format=torch.channels_last).split(out_channels)
    out = torch.empty(n, out_channels, 2 * h, 2 * w, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    pixels = out.permute(0, 2, 3, 1).view(n, h, 2, w, 2, out_channels)
    # Output (i, j) of the padded 2×2 convolution sees input rows i-1, i and columns j-1, j: phase (a, b) is the
    # (h, w) window starting at (a, b). One phase at a time, so only a quarter of the output exists twice.
    for a in range(2):
        for b in range(2):
            phase = F.conv2d(x, kernels[2 * a + b], bias, padding=1)
            pixels[:, :, a, :, b, :].copy_(phase.permute(0, 2, 3, 1)[:, a:a + h, b:b + w])
    return out
