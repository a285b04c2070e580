"""MiDaS DPT-Hybrid depth, and normals derived from it (ControlNet 1.0's depth and normal maps).

Both detectors share one network per (device, random_init) while either is alive.
"""
from __future__ import annotations

import math
import weakref

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from annotator.midas.network import DPTHybrid
from annotator.midas.postprocess import depth_image, normal_image, normalized_depth
from annotator.util import HWC3
from annotator.weights import build_network
from weights.files import WeightFiles

__all__ = ["DPTHybrid", "MidasDepthDetector", "MidasNormalDetector", "predict_depth",
           "depth_image", "normal_image", "normalized_depth"]

MULTIPLE = 32  # the network needs sides divisible by 32
_NETWORKS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def shared_network(device: str, random_init: bool, files: WeightFiles | None = None) -> DPTHybrid:
    key = (str(device), bool(random_init), files)
    net = _NETWORKS.get(key)
    if net is None:
        net = build_network(DPTHybrid, "midas", device, random_init, files)
        _NETWORKS[key] = net
    return net


@torch.inference_mode()
def predict_depth(net: DPTHybrid, image: np.ndarray, device: str = "cpu") -> np.ndarray:
    """RGB H×W×3 uint8 -> raw prediction H×W float32. The image is fed at its own size, mapped by
    v / 127.5 - 1 (not MiDaS's own 384 transform); sides that are not multiples of 32 (the apps
    always send multiples of 64) are resized to the nearest ones and the prediction resized back."""
    height, width = image.shape[:2]
    size = tuple(max(MULTIPLE, round(s / MULTIPLE) * MULTIPLE) for s in (height, width))
    if size != (height, width):
        image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device, torch.float32).permute(2, 0, 1)[None]
    depth = net(x / 127.5 - 1.0)[None]
    if size != (height, width):
        depth = F.interpolate(depth, size=(height, width), mode="bicubic", align_corners=False)
    return depth[0, 0].float().cpu().numpy()


class _MidasDetector:
    def __init__(self, device: str = "cpu", random_init: bool = False, files: WeightFiles | None = None):
        self.device = device
        self.net = shared_network(device, random_init, files)


class MidasDepthDetector(_MidasDetector):
    def __call__(self, image: np.ndarray) -> np.ndarray:
        return HWC3(depth_image(predict_depth(self.net, image, self.device)))


class MidasNormalDetector(_MidasDetector):
    def __call__(self, image: np.ndarray, bg_threshold: float = 0.4, alpha: float = 2 * math.pi) -> np.ndarray:
        return normal_image(predict_depth(self.net, image, self.device), alpha, bg_threshold)
