"""Lineart (ControlNet 1.1): dark lines on a white background, from the fine or the coarse generator.

The two models are two weight files for the same network; each detector holds one of them, so the
fine detector works without the coarse file and only the model in use stays in memory.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from annotator.lineart.network import LineartGenerator
from annotator.util import HWC3
from annotator.weights import build_network

__all__ = ["LineartDetector", "LineartGenerator", "WEIGHT_KEYS"]

MULTIPLE = 4  # two stride-2 convs and two ×2 transposed convs: other sizes come back larger
WEIGHT_KEYS = {False: "lineart", True: "lineart_coarse"}  # sk_model.pth, sk_model2.pth


class LineartDetector:
    def __init__(self, device: str = "cpu", random_init: bool = False, files=None, coarse: bool = False):
        self.device = device
        self.coarse = coarse
        self.net = build_network(LineartGenerator, WEIGHT_KEYS[coarse], device, random_init, files)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """RGB H×W×3 uint8 -> H×W×3 uint8, white background with dark lines (the lineart apps feed
        1 - map/255 to the ControlNet)."""
        height, width = image.shape[:2]
        pad_h, pad_w = -height % MULTIPLE, -width % MULTIPLE
        if pad_h or pad_w:  # never at the apps' multiple-of-64 sizes
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, torch.float32).permute(2, 0, 1)[None]
        line = self.net(x / 255.0)[0, 0, :height, :width].float().cpu().numpy()
        return HWC3((line * 255.0).clip(0, 255).astype(np.uint8))
