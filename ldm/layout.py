"""Memory layout of the decoders' bfloat16 activations on the CPU."""
from __future__ import annotations

import torch
from torch import Tensor


def is_cpu_bfloat16(x: Tensor) -> bool:
    """The case the CPU fast paths are for: bfloat16 on the CPU (float32 and CUDA keep PyTorch's defaults)."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu"


def cpu_bfloat16_layout(x: Tensor) -> Tensor:
    """`x` channels-last when it is bfloat16 on the CPU, otherwise as it is.

    The decoders' bfloat16 convolutions at 128-512 px run 1.2-1.5x faster channels-last on the CPU (the layout
    then carries through every layer). float32 keeps the default layout, so its outputs stay the same to the bit.
    The UNet stays in the default layout: at 8-64 px the gain is a few percent, and it only comes with the
    convolution weights kept channels-last too (else each call copies them), which is lost every time weights
    are loaded or swapped.
    """
    return x.contiguous(memory_format=torch.channels_last) if is_cpu_bfloat16(x) else x
