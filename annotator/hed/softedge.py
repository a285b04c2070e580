"""HED soft edges the ControlNet 1.1 way ("SoftEdge_HED", "SoftEdge_HED_safe").

Same network, weights and fusion as `HEDDetector` (whose output stays the 1.0 map); `safe=True`
quantises the fused edge probability to three levels before the ×255.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from annotator.hed.network import ControlNetHED
from annotator.util import HWC3
from annotator.v11_util import safe_step
from annotator.weights import build_network

__all__ = ["SoftEdgeHEDDetector", "edge_probability"]


def edge_probability(sides: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Side-output logits -> float64 H×W probability: bilinear resize to H×W, average, sigmoid."""
    resized = [cv2.resize(s, (width, height), interpolation=cv2.INTER_LINEAR) for s in sides]
    mean = np.mean(np.stack(resized, axis=2), axis=2).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-mean))


class SoftEdgeHEDDetector:
    def __init__(self, device: str = "cpu", random_init: bool = False, files=None):
        self.device = device
        self.net = build_network(ControlNetHED, "hed", device, random_init, files)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, safe: bool = False) -> np.ndarray:
        """RGB H×W×3 uint8 -> H×W×3 uint8, white edges on black (0, 127, 255 only when `safe`)."""
        height, width = image.shape[:2]
        x = torch.from_numpy(image).to(self.device, torch.float32).permute(2, 0, 1)[None]
        sides = [s[0, 0].float().cpu().numpy() for s in self.net(x)]
        edge = edge_probability(sides, height, width)
        if safe:
            edge = safe_step(edge)
        return HWC3((edge * 255.0).clip(0, 255).astype(np.uint8))
