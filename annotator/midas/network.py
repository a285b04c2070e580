"""MiDaS DPT-Hybrid (ViT-B/16 on a ResNet-50 stem) with the official module keys.

`pretrained.model` is timm's vit_base_r50_s16_384 (formerly vit_base_resnet50_384), built without
downloading anything; `pretrained.act_postprocess3/4` reassemble ViT tokens into feature maps;
`scratch` holds the fusion decoder and the depth head.
"""
from __future__ import annotations

import timm
import torch
from torch import nn
from torch.nn import functional as F

VIT_WIDTH = 768
FEATURES = 256
TAP_BLOCKS = (8, 11)  # ViT blocks whose outputs feed the decoder (ResNet stages 0 and 1 feed the rest)


class ProjectReadout(nn.Module):
    """Patch tokens concatenated with the class token, projected back to the token width."""

    def __init__(self, width: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]
        return self.project(torch.cat([patches, tokens[:, :1].expand_as(patches)], -1))


class Reassemble(nn.Sequential):
    """Tokens -> (N, C, gh, gw) map, then a 1×1 conv (and a 3×3 stride-2 conv for the deepest tap).

    Slots 1 and 2 (the original's transpose and fixed-size unflatten) hold no weights; identities
    keep the convs at the official keys `.3` and `.4`.
    """

    def __init__(self, downsample: bool = False):
        layers = [ProjectReadout(VIT_WIDTH), nn.Identity(), nn.Identity(), nn.Conv2d(VIT_WIDTH, VIT_WIDTH, 1)]
        if downsample:
            layers.append(nn.Conv2d(VIT_WIDTH, VIT_WIDTH, 3, stride=2, padding=1))
        super().__init__(*layers)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self[0](tokens).transpose(1, 2).unflatten(2, grid)
        for conv in list(self)[3:]:
            x = conv(x)
        return x


class HybridViTEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = timm.create_model("vit_base_r50_s16_384", pretrained=False)
        self.act_postprocess3 = Reassemble()
        self.act_postprocess4 = Reassemble(downsample=True)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The 24×24 trained grid, bilinearly resized to the input's patch grid."""
        pos = self.model.pos_embed
        side = int((pos.shape[1] - 1) ** 0.5)
        patches = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
        return torch.cat([pos[:, :1], patches.flatten(2).transpose(1, 2)], 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, 3, H, W), H and W multiples of 32 -> maps at 1/4, 1/8, 1/16, 1/32 (256, 512, 768, 768 ch)."""
        resnet = self.model.patch_embed.backbone
        stage0 = resnet.stages[0](resnet.stem(x))
        stage1 = resnet.stages[1](stage0)
        patches = self.model.patch_embed.proj(resnet.norm(resnet.stages[2](stage1)))
        grid = tuple(patches.shape[2:])
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.model.cls_token.expand(len(x), -1, -1), tokens], 1) + self.position_embedding(grid)
        taps = []
        for i, block in enumerate(self.model.blocks[: TAP_BLOCKS[-1] + 1]):
            tokens = block(tokens)
            if i in TAP_BLOCKS:
                taps.append(tokens)
        return stage0, stage1, self.act_postprocess3(taps[0], grid), self.act_postprocess4(taps[1], grid)


class ResidualConvUnit(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(FEATURES, FEATURES, 3, padding=1)
        self.conv2 = nn.Conv2d(FEATURES, FEATURES, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """(deeper path [+ refined skip]) -> residual unit -> ×2 bilinear (align_corners) -> 1×1 conv."""

    def __init__(self):
        super().__init__()
        self.out_conv = nn.Conv2d(FEATURES, FEATURES, 1)
        self.resConfUnit1 = ResidualConvUnit()
        self.resConfUnit2 = ResidualConvUnit()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Decoder(nn.Module):
    def __init__(self, in_channels=(256, 512, VIT_WIDTH, VIT_WIDTH)):
        super().__init__()
        for i, cin in enumerate(in_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(cin, FEATURES, 3, padding=1, bias=False))
        for i in range(1, len(in_channels) + 1):
            setattr(self, f"refinenet{i}", FeatureFusionBlock())
        self.output_conv = nn.Sequential(
            nn.Conv2d(FEATURES, FEATURES // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(FEATURES // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
            nn.ReLU(),  # non-negative inverse depth
        )

    def forward(self, features) -> torch.Tensor:
        l1, l2, l3, l4 = (getattr(self, f"layer{i}_rn")(f) for i, f in enumerate(features, start=1))
        path = self.refinenet4(l4)
        path = self.refinenet3(path, l3)
        path = self.refinenet2(path, l2)
        path = self.refinenet1(path, l1)
        return self.output_conv(path)


class DPTHybrid(nn.Module):
    """(N, 3, H, W) in [-1, 1], H and W multiples of 32 -> (N, H, W) relative inverse depth (≥ 0)."""

    def __init__(self):
        super().__init__()
        self.pretrained = HybridViTEncoder()
        self.scratch = Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scratch(self.pretrained(x)).squeeze(1)
