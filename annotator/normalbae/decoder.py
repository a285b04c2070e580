"""Normal BAE decoder (Bae, Budvytis & Cipolla 2021, "Estimating and Exploiting the Aleatoric Uncertainty
in Surface Normal Estimation"): a U-Net style up-sampling path, a coarse 1/8 prediction, then three
test-time refinements that run a per-pixel MLP on every pixel at 1/4, 1/2 and full resolution.

Each prediction has 4 channels: a unit normal (x, y, z) and a concentration κ > 0.01 (its certainty).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MIN_KAPPA = 0.01


def normalize_prediction(out: torch.Tensor) -> torch.Tensor:
    """(N, 4, ...) raw -> xyz scaled to unit length (+1e-10 against 0), κ = ELU(κ) + 1 + 0.01."""
    x, y, z, kappa = torch.split(out, 1, dim=1)
    length = torch.sqrt(x**2.0 + y**2.0 + z**2.0) + 1e-10
    return torch.cat([x / length, y / length, z / length, F.elu(kappa) + 1.0 + MIN_KAPPA], dim=1)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class UpSampleBN(nn.Module):
    """Bilinear (align_corners) up-sampling to the skip's size, concat, 2 × [3×3 conv, BN, LeakyReLU 0.01]."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self._net = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([up, skip], dim=1))


def pointwise_mlp(cin: int) -> nn.Sequential:
    """The refinement head: a per-pixel MLP cin -> 128 -> 128 -> 128 -> 4 (1-wide Conv1d layers)."""
    return nn.Sequential(
        nn.Conv1d(cin, 128, 1), nn.ReLU(),
        nn.Conv1d(128, 128, 1), nn.ReLU(),
        nn.Conv1d(128, 128, 1), nn.ReLU(),
        nn.Conv1d(128, 4, 1),
    )


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(2048, 2048, 1)
        self.up1 = UpSampleBN(2048 + 176, 1024)
        self.up2 = UpSampleBN(1024 + 64, 512)
        self.up3 = UpSampleBN(512 + 40, 256)
        self.up4 = UpSampleBN(256 + 24, 128)
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4 = pointwise_mlp(512 + 4)
        self.out_conv_res2 = pointwise_mlp(256 + 4)
        self.out_conv_res1 = pointwise_mlp(128 + 4)

    def refine(self, head: nn.Sequential, features: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """Both inputs up-sampled ×2, concatenated, the MLP applied to every pixel, normalised."""
        x = torch.cat([upsample2(features), upsample2(prediction)], dim=1)
        n, c, h, w = x.shape
        return normalize_prediction(head(x.view(n, c, -1))).view(n, 4, h, w)

    def forward(self, features: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Encoder taps (1/2, 1/4, 1/8, 1/16, 1/32) -> predictions at 1/8, 1/4, 1/2 and 1/1 (H, W multiples of 8)."""
        skip2, skip4, skip8, skip16, deepest = features
        d16 = self.up1(self.conv2(deepest), skip16)
        d8 = self.up2(d16, skip8)
        d4 = self.up3(d8, skip4)
        d2 = self.up4(d4, skip2)
        res8 = normalize_prediction(self.out_conv_res8(d8))
        res4 = self.refine(self.out_conv_res4, d8, res8)
        res2 = self.refine(self.out_conv_res2, d4, res4)
        res1 = self.refine(self.out_conv_res1, d2, res2)
        return [res8, res4, res2, res1]
