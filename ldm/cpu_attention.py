"""Scaled dot-product attention, with a faster path for bfloat16 self-attention on the CPU.

`attention(q, k, v)` is `F.scaled_dot_product_attention(q, k, v)` for tensors B×heads×N×D, except for inference
in bfloat16 on the CPU with at least `MIN_KEYS` keys (the UNet's self-attention at 64×64 and 32×32 latents, the
VAE's mid-block attention) on a CPU without AMX. There (AVX512-BF16 only, e.g. AMD Zen 4) PyTorch's
flash-attention kernel reaches about 130 GFLOP/s at SD 1.5's head size 40, a third of what the same CPU's bfloat16
matrix products do, and `blocked_attention` is 1.4–1.7× faster on the same inputs; its softmax is the compiled
one of `native_softmax` where this machine can build it, another 1.25x on the whole attention. On a CPU with AMX
tiles (Intel Sapphire Rapids and later) PyTorch's kernel runs its products on the tiles and is the faster one
(a 64×64 self-attention: 92 against 153 ms), so it is kept there. float32 (every reference output), CUDA and
training keep PyTorch's kernel.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm.layout import is_cpu_bfloat16
from ldm.native_softmax import softmax

MIN_KEYS = 1024
QUERY_BLOCK = 512  # a 512×4096 bfloat16 score block (4 MB) stays in this kind of CPU's caches
COLUMN_MULTIPLE = 16  # oneDNN's bfloat16 kernels take value widths that are multiples of 16 much faster


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (as PyTorch detects them; False where this PyTorch cannot tell)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    if (is_cpu_bfloat16(q) and k.shape[-2] >= MIN_KEYS and not cpu_has_amx()
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))):
        return blocked_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, block: int = QUERY_BLOCK) -> Tensor:
    """softmax(q kᵀ / √d) v, one head and `block` queries at a time, so that the score block is computed,
    normalised and multiplied while it is in cache (the full N×N scores of one 512² self-attention are 268 MB and
    this kind of machine moves well under 10 GB/s). The 1/√d scale is applied to q (N×D) rather than to the
    scores (N×N); v is zero-padded to a multiple of 16 columns, and the padding's output columns are dropped.
    The two score buffers are allocated once per call: a fresh 4 MB block per step would be a fresh mapping,
    paid for in page faults."""
    *batch, n, d = q.shape
    width, count = v.shape[-1], k.shape[-2]
    padded = -(-width // COLUMN_MULTIPLE) * COLUMN_MULTIPLE
    q = (q * d**-0.5).reshape(-1, n, d)
    keys = k.transpose(-1, -2).reshape(-1, d, count).contiguous()
    values = F.pad(v, (0, padded - width)).reshape(-1, count, padded)
    out = torch.empty(q.shape[0], n, padded, dtype=q.dtype, device=q.device)
    scores, weights = torch.empty(2, min(block, n), count, dtype=q.dtype, device=q.device)
    for head in range(q.shape[0]):
        for start in range(0, n, block):
            rows = slice(start, start + block)
            size = q[head, rows].shape[0]
            torch.matmul(q[head, rows], keys[head], out=scores[:size])
            softmax(scores[:size], out=weights[:size])
            torch.matmul(weights[:size], values[head], out=out[head, rows])
    return out[..., :width].reshape(*batch, n, width)
