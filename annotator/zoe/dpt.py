"""MiDaS v3.1 DPT (Ranftl et al., "Vision Transformers for Dense Prediction") on the BEiT backbone.

`pretrained.model` is the transformer, `pretrained.act_postprocess1..4` reassemble the tapped token
sequences into maps at 1/4, 1/8, 1/16 and 1/32 of the input, `scratch` is the fusion decoder and the
relative-depth head. Besides the depth, `forward` returns the decoder features ZoeDepth reads.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from annotator.midas.network import ProjectReadout  # the same readout as MiDaS v3.0
from annotator.zoe.beit import Beit
from annotator.zoe.config import ZoeConfig

HEAD_CHANNELS = 32  # channels of the last hidden map of the depth head, read by ZoeDepth


class Reassemble(nn.Sequential):
    """Tokens -> (N, C, h, w) map -> 1×1 conv -> resampling: transposed conv ×4 or ×2, nothing, or a
    3×3 stride-2 conv. Slots 1 and 2 (the original's transpose and fixed-size unflatten) hold no
    weights; identities keep the convs at the official keys `.3` and `.4`."""

    def __init__(self, width: int, channels: int, scale: float):
        layers = [ProjectReadout(width), nn.Identity(), nn.Identity(), nn.Conv2d(width, channels, 1)]
        if scale > 1:
            layers.append(nn.ConvTranspose2d(channels, channels, int(scale), stride=int(scale)))
        elif scale < 1:
            layers.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
        super().__init__(*layers)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self[0](tokens).transpose(1, 2).unflatten(2, grid)
        for layer in list(self)[3:]:
            x = layer(x)
        return x


class BeitEncoder(nn.Module):
    SCALES = (4, 2, 1, 0.5)

    def __init__(self, cfg: ZoeConfig):
        super().__init__()
        self.taps = cfg.taps
        self.model = Beit(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.trained_grid, cfg.num_classes)
        for i, (c, scale) in enumerate(zip(cfg.channels, self.SCALES), start=1):
            setattr(self, f"act_postprocess{i}", Reassemble(cfg.width, c, scale))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens, grid = self.model(x, self.taps)
        return [getattr(self, f"act_postprocess{i}")(t, grid) for i, t in enumerate(tokens, start=1)]


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    """(deeper path [+ refined skip]) -> residual unit -> bilinear resize (align_corners) -> 1×1 conv.

    The resize goes to `size` (the next skip's size) or ×2 for the last block."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTOutput(NamedTuple):
    depth: torch.Tensor  # (N, H, W) relative inverse depth, ≥ 0
    head: torch.Tensor  # (N, 32, H, W) the head's last hidden map (after its ReLU)
    bottleneck: torch.Tensor  # (N, F, H/32, W/32) layer4_rn output
    fused: tuple[torch.Tensor, ...]  # refinenet4..1 outputs at 1/16, 1/8, 1/4, 1/2


class Decoder(nn.Module):
    def __init__(self, channels: tuple[int, ...], features: int):
        super().__init__()
        for i, c in enumerate(channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        for i in range(1, len(channels) + 1):
            setattr(self, f"refinenet{i}", FeatureFusionBlock(features))
        self.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(features // 2, HEAD_CHANNELS, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(HEAD_CHANNELS, 1, 1),
            nn.ReLU(),  # non-negative inverse depth
        )

    def forward(self, maps: list[torch.Tensor]) -> DPTOutput:
        l1, l2, l3, l4 = (getattr(self, f"layer{i}_rn")(m) for i, m in enumerate(maps, start=1))
        r4 = self.refinenet4(l4, size=l3.shape[2:])
        r3 = self.refinenet3(r4, l3, size=l2.shape[2:])
        r2 = self.refinenet2(r3, l2, size=l1.shape[2:])
        r1 = self.refinenet1(r2, l1)
        head = self.output_conv[:4](r1)
        depth = self.output_conv[4:](head)
        return DPTOutput(depth.squeeze(1), head, l4, (r4, r3, r2, r1))


class DPT(nn.Module):
    def __init__(self, cfg: ZoeConfig):
        super().__init__()
        self.pretrained = BeitEncoder(cfg)
        self.scratch = Decoder(cfg.channels, cfg.features)

    def forward(self, x: torch.Tensor) -> DPTOutput:
        """(N, 3, H, W) normalised to [-1, 1], H and W multiples of 32."""
        return self.scratch(self.pretrained(x))
