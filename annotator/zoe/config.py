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
# Built for random weights (tests, `--tiny`): outputs are noise either way, and the full-size BEiT-L would take
# about a minute per call on a CPU. The published layout is checked separately, on the meta device.
RANDOM_INIT = ZoeConfig(width=64, depth=4, heads=4, taps=(0, 1, 2, 3), channels=(16, 32, 64, 64), features=32,
                        num_classes=10)
