"""A convolution over many input channels and few pixels, computed as one matrix product.

oneDNN's bfloat16 convolutions on the CPU run at 90-240 GFLOP/s where a layer has a wide input and a small
image: in the SD 1.5 UNet, the decoder's first convolutions over the concatenated skip inputs (2560 channels at
8×8, 1920-2560 at 16×16) and the 1280-channel ones at 8×8, against 400+ GFLOP/s at 32-64 px. There the input
unfolded into its patches (C·k·k × pixels, a few MB) is small next to the weight, and `weight (O × C·k·k) @ patches`
is one matrix product over the weight as it is stored, which the same library runs 1.3-2.7× faster.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.layout import is_cpu_bfloat16

# Taken where the patch matrix is at least this many times wider (C·k·k) than it is long (output pixels).
MIN_WIDTH_PER_PIXEL = 64


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same checkpoint keys) that takes the matrix-product path in bfloat16 inference
    on the CPU for a wide input over few pixels. float32, CUDA and autograd keep PyTorch's convolution, bit for bit."""

    def forward(self, x: Tensor) -> Tensor:
        if is_cpu_bfloat16(x) and not torch.is_grad_enabled() and self.prefers_matmul(x):
            return conv_as_matmul(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)

    def prefers_matmul(self, x: Tensor) -> bool:
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        n, _, h, w = x.shape
        out_h = (h + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        out_w = (w + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        return self.weight[0].numel() >= MIN_WIDTH_PER_PIXEL * n * out_h * out_w


def conv_as_matmul(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                   padding: tuple[int, int]) -> Tensor:
    """F.conv2d(x, weight, bias, stride, padding) (groups 1, dilation 1) as weight @ unfold(x): with the bias
    added inside the product (addmm), so the result is rounded once, as the convolution rounds it."""
    n, _, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    patches = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # N × C·kh·kw × pixels
    patches = patches[0] if n == 1 else patches.transpose(0, 1).reshape(patches.shape[1], -1)
    flat = weight.reshape(out_channels, -1)
    out = torch.mm(flat, patches) if bias is None else torch.addmm(bias[:, None], flat, patches)
    return out.view(out_channels, n, out_h, out_w).transpose(0, 1).contiguous()
