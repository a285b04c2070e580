"""HED soft edges (white on black) and the fake scribble made from them."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from annotator.hed.network import ControlNetHED
from annotator.hed.postprocess import fake_scribble, nms
from annotator.util import HWC3
from annotator.weights import build_network
from weights.files import WeightFiles

__all__ = ["ControlNetHED", "HEDDetector", "FakeScribbleDetector", "nms", "fake_scribble", "fuse_sides"]


def fuse_sides(sides: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Side-output logits -> one uint8 edge map: bilinear resize to H×W, average, sigmoid, ×255."""
    resized = [cv2.resize(s, (width, height), interpolation=cv2.INTER_LINEAR) for s in sides]
    mean = np.mean(np.stack(resized, axis=2), axis=2).astype(np.float64)
    return (1.0 / (1.0 + np.exp(-mean)) * 255.0).clip(0, 255).astype(np.uint8)


class HEDDetector:
    def __init__(self, device: str = "cpu", random_init: bool = False, files: WeightFiles | None = None):
        self.device = device
        self.net = build_network(ControlNetHED, "hed", device, random_init, files)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        x = torch.from_numpy(image).to(self.device, torch.float32).permute(2, 0, 1)[None]
        sides = [s[0, 0].float().cpu().numpy() for s in self.net(x)]
        return HWC3(fuse_sides(sides, height, width))


class FakeScribbleDetector:
    """HED, then (after the apps resized the map to the output size) nms + blur + threshold."""

    def __init__(self, device: str = "cpu", random_init: bool = False, files: WeightFiles | None = None):
        self.prepare = HEDDetector(device, random_init, files)

    @staticmethod
    def finish(hed_map: np.ndarray) -> np.ndarray:
        return fake_scribble(hed_map)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.finish(self.prepare(image))
