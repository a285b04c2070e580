"""Memory layout of the decoders' image-sized activations."""
from __future__ import annotations

import torch
from torch import Tensor


def decoder_layout(z: Tensor) -> Tensor:
    """`z` channels-last when it is bfloat16 on the CPU, otherwise as it is.

    The decoders' bfloat16 convolutions at 128-512 px run 1.2-1.5x faster channels-last on the CPU (the layout
    then carries through every layer). float32 keeps the default layout, so its outputs stay the same to the bit.
    """
    if z.dtype == torch.bfloat16 and z.device.type == "cpu":
        return z.contiguous(memory_format=torch.channels_last)
    return z
