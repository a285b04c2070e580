"""Transformer pieces of the SD 1.5 UNet (names mirror the official checkpoint keys)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldm.cpu_attention import attention
from ldm.layout import is_cpu_bfloat16


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics whatever the parameter dtype (sane statistics in fp16/bf16).

    PyTorch's CPU kernel already accumulates bfloat16 inputs in float32; there the input goes to it as is, which
    spares two copies of the activations (a quarter of the VAE decoder's time at 512²)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_cpu_bfloat16(x):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def maybe_checkpoint(module: nn.Module, fn, *args: torch.Tensor) -> torch.Tensor:
    """fn(*args), with gradient checkpointing when the module asks for it and is training."""
    if module.use_checkpoint and module.training and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (split_heads(t, self.heads) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        return self.to_out(merge_heads(attention(q, k, v)))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        gelu = F.gelu(gate)
        # In place when no backward pass needs gelu's output: no second buffer the size of the product (at a
        # 64×64 latent that halves the time of this line); `gelu * x` equals `x * gelu` to the bit.
        return gelu * x if gelu.requires_grad else gelu.mul_(x)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0,
                 use_checkpoint: bool = False):
        super().__init__()
        # Registration order (attn1, ff, attn2, norms) follows the checkpoint's key order.
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self, self._forward, x, context)

    def _forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm -> proj_in -> transformer blocks over the H*W tokens -> zero-init proj_out, plus the input."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 use_linear: bool = False, dropout: float = 0.0, use_checkpoint: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = GroupNorm32(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, use_checkpoint) for _ in range(depth))
        self.proj_out = zero_module(nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = self.tokens_in(self.norm(x))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return self.features_out(tokens, h, w) + x

    def tokens_in(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×H×W features -> B×HW×inner tokens through proj_in."""
        if self.use_linear:
            return self.proj_in(x.flatten(2).transpose(1, 2))
        if is_cpu_bfloat16(x):
            # The 1×1 convolution as a product over the transposed view: the tokens come out of the product with
            # no transposed copy of the activations (copying bfloat16 across strides is slow on the CPU).
            # baddbmm adds the bias before its one rounding, as the convolution does (F.linear here rounds twice).
            weight = self.proj_in.weight.flatten(1).t()
            return torch.baddbmm(self.proj_in.bias, x.flatten(2).transpose(1, 2), weight.expand(x.shape[0], -1, -1))
        return self.proj_in(x).flatten(2).transpose(1, 2)

    def features_out(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """B×HW×inner tokens -> B×C×H×W features through proj_out."""
        b = tokens.shape[0]
        if self.use_linear:
            return self.proj_out(tokens).transpose(1, 2).reshape(b, -1, h, w)
        if is_cpu_bfloat16(tokens):
            # weight @ tokensᵀ is channels-first already (see tokens_in).
            weight = self.proj_out.weight.flatten(1)
            return torch.baddbmm(self.proj_out.bias[:, None], weight.expand(b, -1, -1),
                                 tokens.transpose(1, 2)).view(b, -1, h, w)
        return self.proj_out(tokens.transpose(1, 2).reshape(b, -1, h, w))
