"""M-LSD straight-line detector: 1-px white line segments on black."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from annotator.mlsd.decode import decode_segments, draw_segments
from annotator.mlsd.network import MobileV2MLSDLarge
from annotator.util import HWC3
from annotator.weights import build_network
from weights.files import WeightFiles

__all__ = ["MLSDDetector", "MobileV2MLSDLarge", "decode_segments", "draw_segments", "network_input"]

MULTIPLE = 16  # the decoder's skip connections need sides divisible by 16


def network_input(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 -> (1, 4, H', W') float in [-1, 1]: RGB plus a constant channel of ones (→ -0.992),
    edge-padded right/bottom to multiples of 16 (a no-op at the apps' multiple-of-64 sizes)."""
    height, width = image.shape[:2]
    pad_h, pad_w = -height % MULTIPLE, -width % MULTIPLE
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
    x = np.concatenate([image, np.ones(image.shape[:2] + (1,), np.uint8)], axis=2)
    return torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1.0


class MLSDDetector:
    def __init__(self, device: str = "cpu", random_init: bool = False, files: WeightFiles | None = None):
        self.device = device
        self.net = build_network(MobileV2MLSDLarge, "mlsd", device, random_init, files)

    @torch.inference_mode()
    def segments(self, image: np.ndarray, value_threshold: float = 0.1, distance_threshold: float = 0.1) -> np.ndarray:
        maps = self.net(network_input(image).to(self.device))[0]
        return decode_segments(maps, value_threshold, distance_threshold)

    def __call__(self, image: np.ndarray, value_threshold: float = 0.1, distance_threshold: float = 0.1) -> np.ndarray:
        height, width = image.shape[:2]
        return HWC3(draw_segments(self.segments(image, value_threshold, distance_threshold), height, width))
