"""ZoeDepth ZoeD-N (Bhat et al. 2023): MiDaS v3.1 DPT-BEiT-L/16 relative depth + the metric bins head.

Key layout of the published ZoeD_M12_N.pt: `core.core.*` is the MiDaS network (inside the `MidasCore`
wrapper, which holds no weights), the head sits at the top level.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from annotator.zoe.config import ZOED_M12_N, ZoeConfig
from annotator.zoe.dpt import DPT, HEAD_CHANNELS, DPTOutput
from annotator.zoe.metric_head import Attractor, ConditionalLogBinomial, Projector, SeedBinRegressor

N_BINS = 64
EMBEDDING = 128  # bin embedding width
ATTRACTORS = (16, 8, 4, 1)  # attractor points at the decoder scales 1/16, 1/8, 1/4, 1/2
# The configuration asks for alpha 1000, but the original attractor layer calls its distance function
# without it, so the function's default strength 300 is what the published weights were trained with.
ATTRACTOR_ALPHA, ATTRACTOR_GAMMA = 300.0, 2
MIN_TEMP, MAX_TEMP = 0.0212, 50.0
NET_SIZE = (384, 512)  # (height, width) the input is scaled towards
MULTIPLE = 32


def network_size(height: int, width: int) -> tuple[int, int]:
    """The network input size for an h×w image ("minimal" keep-aspect policy).

    Of the scales 384/h and 512/w the one closer to 1 scales both sides, each rounded (half to even) to a
    multiple of 32. A side that would round to 0 (very elongated images) gets 32 instead; the original
    crashes there."""
    scale_h, scale_w = NET_SIZE[0] / height, NET_SIZE[1] / width
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    return tuple(max(MULTIPLE, round(scale * side / MULTIPLE) * MULTIPLE) for side in (height, width))


class MidasCore(nn.Module):
    """The MiDaS network with ZoeDepth's input preparation: resize to `network_size` (bilinear,
    align_corners True), then map [0, 1] to [-1, 1] (mean 0.5, std 0.5)."""

    def __init__(self, cfg: ZoeConfig):
        super().__init__()
        self.core = DPT(cfg)

    def forward(self, x: torch.Tensor) -> DPTOutput:
        size = network_size(x.shape[2], x.shape[3])
        if size != tuple(x.shape[2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.core((x - 0.5) / 0.5)


class ZoeDepth(nn.Module):
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, h, w) metric depth in metres at the network input size (h, w)."""

    def __init__(self, cfg: ZoeConfig = ZOED_M12_N):
        super().__init__()
        features = cfg.features
        self.core = MidasCore(cfg)
        self.conv2 = nn.Conv2d(features, features, 1)
        self.seed_bin_regressor = SeedBinRegressor(features, N_BINS)
        self.seed_projector = Projector(features, EMBEDDING)
        self.projectors = nn.ModuleList(Projector(features, EMBEDDING) for _ in ATTRACTORS)
        self.attractors = nn.ModuleList(
            Attractor(EMBEDDING, n, ATTRACTOR_ALPHA, ATTRACTOR_GAMMA) for n in ATTRACTORS)
        # conditioned on the head's last hidden map plus the relative depth (+1 channel)
        self.conditional_log_binomial = ConditionalLogBinomial(
            HEAD_CHANNELS + 1, EMBEDDING, N_BINS, MIN_TEMP, MAX_TEMP)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        midas = self.core(x)
        bottleneck = self.conv2(midas.bottleneck)
        centres = self.seed_bin_regressor(bottleneck)
        embedding = self.seed_projector(bottleneck)
        for projector, attractor, features in zip(self.projectors, self.attractors, midas.fused):
            previous, embedding = embedding, projector(features)
            centres = attractor(embedding, centres, previous)
        last = midas.head
        size = last.shape[-2:]
        relative = F.interpolate(midas.depth.unsqueeze(1), size=size, mode="bilinear", align_corners=True)
        embedding = F.interpolate(embedding, size=size, mode="bilinear", align_corners=True)
        probabilities = self.conditional_log_binomial(torch.cat([last, relative], dim=1), embedding)
        centres = F.interpolate(centres, size=probabilities.shape[-2:], mode="bilinear", align_corners=True)
        return torch.sum(probabilities * centres, dim=1, keepdim=True)

