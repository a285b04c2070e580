"""ControlNet: the trainable copy of the UNet encoder plus hint encoder and zero convolutions."""
from __future__ import annotations

import torch
from torch import nn

from cldm.config import ControlNetConfig
from ldm.attention import zero_module
from ldm.layout import cpu_bfloat16_layout
from ldm.unet import TimestepEmbedSequential, embed_time, input_blocks, middle_block, time_embed


# Channel widths of the eight 3x3 convs of input_hint_block (fixed in the original, whatever the UNet size).
HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)
HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2, 1)


def zero_conv(channels: int) -> TimestepEmbedSequential:
    return TimestepEmbedSequential(zero_module(nn.Conv2d(channels, channels, 1)))


def hint_block(hint_channels: int, out_channels: int) -> TimestepEmbedSequential:
    """Eight 3x3 convs with SiLU between (Sequential indices 0, 2, ..., 14); total stride 8, last zero-init."""
    widths = (hint_channels, *HINT_CHANNELS, out_channels)
    layers: list[nn.Module] = []
    for i, stride in enumerate(HINT_STRIDES):
        conv = nn.Conv2d(widths[i], widths[i + 1], 3, stride=stride, padding=1)
        layers += [conv, nn.SiLU()] if i < len(HINT_STRIDES) - 1 else [zero_module(conv)]
    return TimestepEmbedSequential(*layers)


class ControlNet(nn.Module):
    def __init__(self, cfg: ControlNetConfig):
        super().__init__()
        self.config = cfg
        # Read by the control path (`cldm.control.control_residuals`); the shared model sets it per weights file.
        self.global_average_pooling = cfg.global_average_pooling
        self.time_embed = time_embed(cfg)
        self.input_blocks, chans = input_blocks(cfg)
        self.zero_convs = nn.ModuleList(zero_conv(c) for c in chans)
        self.input_hint_block = hint_block(cfg.hint_channels, cfg.model_channels)
        self.middle_block = middle_block(cfg)
        self.middle_block_out = zero_conv(cfg.model_channels * cfg.channel_mult[-1])

    def embed_hint(self, hint: torch.Tensor) -> torch.Tensor:
        """The hint encoder's output (`input_hint_block`, total stride 8). It sees neither the timestep nor the
        text, so a sampler can compute it once per run (`embedded_hint` of `forward`)."""
        if hint.shape[1] != self.config.hint_channels:
            raise ValueError(f"hint must have {self.config.hint_channels} channels, got shape {tuple(hint.shape)}")
        # Channels-last in bfloat16 on the CPU: its narrow convolutions at 128-512 px then run 3-5x faster (the
        # result goes back to the default layout the UNet keeps; float32 is untouched).
        hint = cpu_bfloat16_layout(hint.to(self.time_embed[0].weight.dtype))
        return self.input_hint_block(hint, None, None).contiguous()

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                embedded_hint: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Residuals, one per input block (shallow to deep) and the middle block last; unscaled.
        `embedded_hint`: `embed_hint(hint)` when the caller already has it."""
        dtype = self.time_embed[0].weight.dtype
        x, context = x.to(dtype), context.to(dtype)
        guided_hint = self.embed_hint(hint) if embedded_hint is None else embedded_hint
        if guided_hint.shape[-2:] != x.shape[-2:] or guided_hint.shape[0] != x.shape[0]:
            raise ValueError(f"hint {tuple(hint.shape)} does not match latent {tuple(x.shape)}: "
                             "the hint must be 8x the latent size, same batch")
        emb = embed_time(self.time_embed, timesteps, self.config.model_channels)
        outs = []
        h = x
        for i, (block, zero) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided_hint
            outs.append(zero(h, emb, context))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h, emb, context))
        return outs
