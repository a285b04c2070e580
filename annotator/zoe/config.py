"""Sizes of the ZoeDepth network: the published ZoeD_M12_N (default) or a reduced one for tests."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZoeConfig:
    width: int = 1024  # BEiT-L/16 token width
    depth: int = 24  # transformer blocks
    heads: int = 16
    mlp_ratio: int = 4
    trained_grid: int = 24  # patch grid the relative-position tables were trained for (384 / 16)
    num_classes: int = 1000  # the unused ImageNet head
    taps: tuple[int, ...] = (5, 11, 17, 23)  # blocks whose outputs feed the decoder
    channels: tuple[int, ...] = (256, 512, 1024, 1024)  # reassembled maps at 1/4, 1/8, 1/16, 1/32
    features: int = 256  # decoder width


ZOED_M12_N = ZoeConfig()
