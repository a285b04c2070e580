"""TAESD: Tiny AutoEncoder for Stable Diffusion (madebyollin/taesd), a distilled stand-in for the SD VAE.

Both halves are plain `nn.Sequential`s whose indices are the key names of the published files
(`taesd_decoder.safetensors` / `.pth`: `1.weight`, `3.conv.0.weight`, `3.skip...`; `taesd_encoder.*`: `0.weight`, ...):

    decoder  0 Clamp   1 conv(latent->64)   2 ReLU   3-5 Block   6 Upsample x2   7 conv (no bias)
             8-10 Block   11 Upsample   12 conv   13-15 Block   16 Upsample   17 conv   18 Block   19 conv(64->3)
    encoder  0 conv(3->64)   1 Block   2 conv stride 2 (no bias)   3-5 Block   6 conv s2   7-9 Block
             10 conv s2   11-13 Block   14 conv(64->latent)

Block = conv3x3-ReLU-conv3x3-ReLU-conv3x3 plus a skip (1x1 conv without bias when the width changes), then ReLU.

Ranges (what the preview needs to know):
* the decoder takes the diffusion latent as the UNet denoises it, i.e. already multiplied by SD's scale_factor
  0.18215; no `1 / scale_factor` is applied before it (diffusers' `AutoencoderTiny` has scaling_factor 1.0).
  Its Clamp squashes the latent softly into (-3, 3) with tanh(z / 3) * 3.
* the decoder returns RGB in [0, 1] (approximately; not clipped). SD's `decode_first_stage(z)` =
  VAE.decode(z / 0.18215) returns [-1, 1], so decode_first_stage(z) ~ 2 * decoder(z) - 1; `TAESD.decode` returns
  that [-1, 1] form, a drop-in for previews.
* the encoder takes RGB in [0, 1] and returns the diffusion latent (~ 0.18215 * the VAE posterior's mean);
  `TAESD.encode` takes [-1, 1] like `encode_first_stage`.

diffusers' `AutoencoderTiny` holds the same layers as `decoder.layers.N` (its Clamp is code, not a layer, so its
decoder indices are ours minus one) and `encoder.layers.N` (same indices); `state_dict_from_diffusers` renames.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from ldm.layout import cpu_bfloat16_layout

CHANNELS = 64
LATENT_CHANNELS = 4  # SD 1.x / 2.x / XL; the SD3 and FLUX variants use 16 (read from the weights by `latent_channels`)
DECODER_BLOCKS = (3, 3, 3, 1)  # Blocks per resolution, deepest first; an upsample + conv between levels
ENCODER_BLOCKS = (1, 3, 3, 3)  # Blocks per resolution, full resolution first; a stride-2 conv between levels


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of the latent into (-3, 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def tiny_decoder(latent_channels: int = LATENT_CHANNELS, channels: int = CHANNELS) -> nn.Sequential:
    """Diffusion latent (N, latent_channels, h, w) -> RGB in [0, 1] at (N, 3, 8h, 8w)."""
    layers: list[nn.Module] = [Clamp(), conv(latent_channels, channels), nn.ReLU()]
    for level, blocks in enumerate(DECODER_BLOCKS):
        layers += [Block(channels, channels) for _ in range(blocks)]
        if level == len(DECODER_BLOCKS) - 1:
            layers.append(conv(channels, 3))
        else:
            layers += [nn.Upsample(scale_factor=2), conv(channels, channels, bias=False)]
    return nn.Sequential(*layers)


def tiny_encoder(latent_channels: int = LATENT_CHANNELS, channels: int = CHANNELS) -> nn.Sequential:
    """RGB in [0, 1] (N, 3, H, W) -> diffusion latent (N, latent_channels, H/8, W/8)."""
    layers: list[nn.Module] = [conv(3, channels)]
    for level, blocks in enumerate(ENCODER_BLOCKS):
        if level:
            layers.append(conv(channels, channels, stride=2, bias=False))
        layers += [Block(channels, channels) for _ in range(blocks)]
    layers.append(conv(channels, latent_channels))
    return nn.Sequential(*layers)


class TAESD(nn.Module):
    """Decoder (and optionally encoder) with SD's [-1, 1] image convention at the interface."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS, with_encoder: bool = False):
        super().__init__()
        self.decoder = tiny_decoder(latent_channels)
        self.encoder = tiny_encoder(latent_channels) if with_encoder else None

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    def decode(self, z: Tensor) -> Tensor:
        """Diffusion latent (as the sampler returns it) -> image in [-1, 1], like `decode_first_stage`."""
        return self.decoder(cpu_bfloat16_layout(z.to(self.dtype))) * 2 - 1

    def encode(self, x: Tensor) -> Tensor:
        """Image in [-1, 1] -> diffusion latent (already in the scaled space the UNet works in)."""
        if self.encoder is None:
            raise RuntimeError("this TAESD was built without an encoder")
        return self.encoder((x.to(self.dtype) + 1) / 2)


def latent_channels(decoder_state: dict[str, Tensor]) -> int:
    """Latent width of an own-format decoder state dict (input channels of its first conv, `1.weight`)."""
    return decoder_state["1.weight"].shape[1]


def state_dict_from_diffusers(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(decoder, encoder) own-format state dicts from an `AutoencoderTiny` one (`decoder.layers.N.*`,
    `encoder.layers.N.*`). Keys of neither half are returned under their own name in the decoder dict, so that
    a strict load reports them."""
    decoder, encoder = {}, {}
    for key, value in state.items():
        found = re.fullmatch(r"(decoder|encoder)\.layers\.(\d+)\.(.+)", key)
        if found is None:
            decoder[key] = value
        elif found[1] == "decoder":
            decoder[f"{int(found[2]) + 1}.{found[3]}"] = value  # + 1: our index 0 is the Clamp
        else:
            encoder[f"{found[2]}.{found[3]}"] = value
    return decoder, encoder
