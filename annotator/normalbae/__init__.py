"""Normal BAE surface normals (ControlNet 1.1's normalbae map): RGB = (normal + 1) / 2 as predicted.

    det = NormalBaeDetector()          # weights "normalbae" = scannet.pt (weights.WEIGHTS)
    normal_map = det(image)            # H×W×3 uint8, R = x, G = y, B = z
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from annotator.normalbae.network import NormalBaeNet, load_scannet
from annotator.weights import build_network

__all__ = ["NormalBaeDetector", "NormalBaeNet", "load_scannet", "predict_normals"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MULTIPLE = 8  # the refinement doubles the 1/8 map three times, so H and W must be multiples of 8


@torch.inference_mode()
def predict_normals(net: NormalBaeNet, image: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """RGB H×W×3 uint8 -> full-resolution prediction (4, H, W) float32: unit normal and κ.

    Sides that are not multiples of 8 (the apps always send multiples of 64) are edge-padded at the
    bottom/right and the prediction cropped back, so every pixel keeps its place."""
    height, width = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).float().permute(2, 0, 1)[None] / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    pad_h, pad_w = -height % MULTIPLE, -width % MULTIPLE
    if pad_h or pad_w:
        x = F.pad(x, [0, pad_w, 0, pad_h], mode="replicate")
    return net(x)[-1][0, :, :height, :width].float()


class NormalBaeDetector:
    def __init__(self, device: str = "cpu", random_init: bool = False, files=None):
        self.device = device
        self.net = build_network(NormalBaeNet, "normalbae", device, random_init, files=files, load=load_scannet)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        normal = predict_normals(self.net, image, self.device)[:3]
        normal = ((normal + 1) * 0.5).clip(0, 1).permute(1, 2, 0).cpu().numpy()
        return (normal * 255.0).clip(0, 255).astype(np.uint8)
