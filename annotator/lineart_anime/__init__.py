"""Anime lineart (ControlNet 1.1): Anime2Sketch, dark lines on a white background."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from annotator.lineart_anime.network import AnimeUNet
from annotator.util import HWC3
from annotator.weights import build_network, load_state, read_state_dict

__all__ = ["AnimeUNet", "LineartAnimeDetector", "load_anime_weights", "network_size"]

MULTIPLE = 256  # eight stride-2 levels


def load_anime_weights(net: AnimeUNet, path: str | Path) -> AnimeUNet:
    """netG.pth: a flat state dict whose keys may carry DataParallel `module.` parts (all are removed)."""
    state = {key.replace("module.", ""): value for key, value in read_state_dict(path).items()}
    return load_state(net, state, path)


def network_size(height: int, width: int) -> tuple[int, int]:
    """Both sides rounded up to multiples of 256 (the image is resized, not padded, to this size)."""
    return MULTIPLE * math.ceil(height / MULTIPLE), MULTIPLE * math.ceil(width / MULTIPLE)


class LineartAnimeDetector:
    def __init__(self, device: str = "cpu", random_init: bool = False, files=None):
        self.device = device
        self.net = build_network(AnimeUNet, "lineart_anime", device, random_init, files, load=load_anime_weights)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """RGB H×W×3 uint8 -> H×W×3 uint8, white background with dark lines: bicubic resize to
        multiples of 256, v/127.5 - 1, network, ×127.5 + 127.5, bicubic resize back, clip."""
        height, width = image.shape[:2]
        net_h, net_w = network_size(height, width)
        resized = cv2.resize(image, (net_w, net_h), interpolation=cv2.INTER_CUBIC)
        x = torch.from_numpy(resized).to(self.device, torch.float32).permute(2, 0, 1)[None]
        line = (self.net(x / 127.5 - 1.0)[0, 0] * 127.5 + 127.5).float().cpu().numpy()
        line = cv2.resize(line, (width, height), interpolation=cv2.INTER_CUBIC)
        return HWC3(line.clip(0, 255).astype(np.uint8))
