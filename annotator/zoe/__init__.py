"""ZoeDepth depth maps (ControlNet 1.1's depth annotator, ZoeD_M12_N weights).

The published file wraps the state dict under "model", without a prefix, and stores 24
`relative_position_index` buffers that current timm no longer saves: they are loaded and checked against
the index computed for the trained 24×24 grid (a file without them gets the computed ones).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from annotator.util import HWC3
from annotator.weights import WeightFileError, build_network, load_state, read_state_dict
from annotator.zoe.beit import relative_position_index
from annotator.zoe.config import ZOED_M12_N, ZoeConfig
from annotator.zoe.infer import depth_image, infer, predict_depth
from annotator.zoe.network import ZoeDepth, network_size

__all__ = ["ZoeDetector", "ZoeDepth", "ZoeConfig", "ZOED_M12_N", "load_zoe", "uninitialised",
           "infer", "predict_depth", "depth_image", "network_size"]


def uninitialised(cfg: ZoeConfig = ZOED_M12_N) -> ZoeDepth:
    """The network built on the meta device and given uninitialised CPU storage: no time spent on
    random init (350M parameters) for weights that a file is about to overwrite."""
    with torch.device("meta"):
        net = ZoeDepth(cfg)
    return net.to_empty(device="cpu")


def load_zoe(net: ZoeDepth, path: str | Path) -> ZoeDepth:
    """Strictly load the file's "model" entry; check the stored relative-position indices."""
    state = read_state_dict(path, wrapper="model")
    computed = {f"core.core.pretrained.model.blocks.{i}.attn.relative_position_index":
                relative_position_index(block.attn.trained_grid)
                for i, block in enumerate(net.core.core.pretrained.model.blocks)}
    if not any(name in state for name in computed):  # saved by timm >= 0.9: the indices were not stored
        state = {**state, **computed}
    load_state(net, state, path)
    grid = "×".join(map(str, net.core.core.pretrained.model.blocks[0].attn.trained_grid))
    for name, expected in computed.items():
        if not torch.equal(state[name], expected):
            raise WeightFileError(f"weight file {path}: {name} is not the relative-position index of the "
                                  f"trained {grid} patch grid")
    return net


class ZoeDetector:
    """RGB H×W×3 uint8 -> H×W×3 uint8 depth image (near = bright) of the same size."""

    def __init__(self, device: str = "cpu", random_init: bool = False, files=None, config: ZoeConfig = ZOED_M12_N):
        self.device = device
        # random_init: a plain seeded construction (PyTorch's default init, ~2 s at full size: no truncated-
        # normal init to avoid); with a file: meta + empty storage (~1 s), every tensor then comes from the file
        make = partial(ZoeDepth, config) if random_init else partial(uninitialised, config)
        self.net = build_network(make, "zoe", device, random_init, files, load=load_zoe)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return HWC3(depth_image(predict_depth(self.net, image, self.device)))
