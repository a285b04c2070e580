"""The Normal BAE network (EfficientNet-B5 encoder + uncertainty-aware decoder) and its weight file."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from annotator.normalbae.decoder import Decoder
from annotator.normalbae.efficientnet import EfficientNetB5
from annotator.weights import load_state, read_state_dict

WRAPPER = "model"  # scannet.pt holds the state dict under this entry
DDP_PREFIX = "module."  # keys saved from DistributedDataParallel carry it


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.original_model = EfficientNetB5()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.original_model(x)


class NormalBaeNet(nn.Module):
    """(N, 3, H, W) ImageNet-normalised RGB, H and W multiples of 8 -> [(N, 4, H/8, W/8), ..., (N, 4, H, W)]:
    unit normal (x, y, z) and concentration κ, coarse to full resolution."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.decoder(self.encoder(x))


def load_scannet(net: NormalBaeNet, path: str | Path) -> NormalBaeNet:
    """Strict load of scannet.pt: the state dict under "model", a leading "module." removed from keys."""
    state = read_state_dict(path, wrapper=WRAPPER)
    state = {key.removeprefix(DDP_PREFIX): value for key, value in state.items()}
    return load_state(net, state, path)
