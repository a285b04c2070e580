"""The SD 1.5 UNet (openaimodel layout): ResBlock, Down/Upsample, TimestepEmbedSequential, UNetModel."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ldm import matmul_conv
from ldm.attention import GroupNorm32, SpatialTransformer, maybe_checkpoint, zero_module
from ldm.config import UNetBackboneConfig, UNetConfig


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] in float32, shape (N, dim)."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D, got shape {tuple(timesteps.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0,
                 use_checkpoint: bool = False):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(),
                                       matmul_conv.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(matmul_conv.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self, self._forward, x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = matmul_conv.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the time embedding to ResBlocks and the text context to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


def attention_heads(cfg: UNetBackboneConfig, channels: int) -> tuple[int, int]:
    """(number of heads, head width) at a given channel count, as openaimodel computes them."""
    if cfg.num_head_channels == -1:
        heads, dim_head = cfg.num_heads, channels // cfg.num_heads
    else:
        heads, dim_head = channels // cfg.num_head_channels, cfg.num_head_channels
    if cfg.legacy:
        dim_head = channels // heads
    return heads, dim_head


def spatial_transformer(cfg: UNetBackboneConfig, channels: int) -> SpatialTransformer:
    heads, dim_head = attention_heads(cfg, channels)
    return SpatialTransformer(channels, heads, dim_head, cfg.transformer_depth, cfg.context_dim,
                              cfg.use_linear_in_transformer, cfg.dropout, cfg.use_checkpoint)


def time_embed(cfg: UNetBackboneConfig) -> nn.Sequential:
    dim = cfg.model_channels * 4
    return nn.Sequential(nn.Linear(cfg.model_channels, dim), nn.SiLU(), nn.Linear(dim, dim))


def input_blocks(cfg: UNetBackboneConfig) -> tuple[nn.ModuleList, list[int]]:
    """The encoder half shared by the UNet and the ControlNet; also returns each block's output channels."""
    emb_dim = cfg.model_channels * 4
    blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, cfg.model_channels, 3, padding=1))])
    chans = [cfg.model_channels]
    ch, ds = cfg.model_channels, 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * cfg.model_channels, cfg.dropout, cfg.use_checkpoint)]
            ch = mult * cfg.model_channels
            if ds in cfg.attention_resolutions:
                layers.append(spatial_transformer(cfg, ch))
            blocks.append(TimestepEmbedSequential(*layers))
            chans.append(ch)
        if level != len(cfg.channel_mult) - 1:
            blocks.append(TimestepEmbedSequential(Downsample(ch)))
            chans.append(ch)
            ds *= 2
    return blocks, chans


def middle_block(cfg: UNetBackboneConfig) -> TimestepEmbedSequential:
    ch, emb_dim = cfg.model_channels * cfg.channel_mult[-1], cfg.model_channels * 4
    return TimestepEmbedSequential(ResBlock(ch, emb_dim, ch, cfg.dropout, cfg.use_checkpoint),
                                   spatial_transformer(cfg, ch),
                                   ResBlock(ch, emb_dim, ch, cfg.dropout, cfg.use_checkpoint))


def embed_time(time_mlp: nn.Sequential, timesteps: torch.Tensor, model_channels: int) -> torch.Tensor:
    weight = time_mlp[0].weight
    return time_mlp(timestep_embedding(timesteps.to(weight.device), model_channels).to(weight.dtype))


class UNetModel(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        self.time_embed = time_embed(cfg)
        self.input_blocks, chans = input_blocks(cfg)
        self.middle_block = middle_block(cfg)
        emb_dim = cfg.model_channels * 4
        ch = cfg.model_channels * cfg.channel_mult[-1]
        ds = 2 ** (len(cfg.channel_mult) - 1)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                skip_ch = chans.pop()
                layers: list[nn.Module] = [ResBlock(ch + skip_ch, emb_dim, mult * cfg.model_channels, cfg.dropout,
                                                    cfg.use_checkpoint)]
                ch = mult * cfg.model_channels
                if ds in cfg.attention_resolutions:
                    layers.append(spatial_transformer(cfg, ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def encode(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor):
        """Input and middle blocks: returns (h, skip features shallow to deep, time embedding)."""
        dtype = self.time_embed[0].weight.dtype
        emb = embed_time(self.time_embed, timesteps, self.config.model_channels)
        h, context = x.to(dtype), context.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        return self.middle_block(h, emb, context), skips, emb

    def decode(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor, context: torch.Tensor):
        context = context.to(h.dtype)
        skips = list(skips)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x, timesteps, context), context)
