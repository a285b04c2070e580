"""Content shuffle and colour shuffle (ControlNet 1.1): images warped / recoloured by smooth random fields.

No network. Randomness comes from `np.random.RandomState(seed)`, which draws exactly what the original
drew from numpy's global generator after `np.random.seed(seed)`, so a seed reproduces the original map.
"""
from __future__ import annotations

import cv2
import numpy as np

from annotator.util import HWC3
from annotator.v11_util import make_noise_disk

__all__ = ["ColorShuffleDetector", "ContentShuffleDetector", "shuffle_flow"]

CELL = 256  # noise grid spacing in output pixels: at 512×512 the visible field has about 2×2 cells


def shuffle_flow(size: tuple[int, int], source_size: tuple[int, int], rng: np.random.RandomState,
                 cell: int = CELL) -> np.ndarray:
    """(h, w, 2) float32 sampling positions into a source of size (H, W): x spans exactly [0, W - 1],
    y exactly [0, H - 1]; x is drawn first."""
    (height, width), (src_h, src_w) = size, source_size
    x = make_noise_disk(height, width, 1, cell, rng) * float(src_w - 1)
    y = make_noise_disk(height, width, 1, cell, rng) * float(src_h - 1)
    return np.concatenate([x, y], axis=2).astype(np.float32)


class ContentShuffleDetector:
    """A smoothly folded collage of the image: output pixel (r, c) = image sampled bilinearly at flow[r, c]."""

    def __init__(self, device: str = "cpu", random_init: bool = False, files=None):
        pass  # no network; the signature matches the other detectors

    def __call__(self, image: np.ndarray, seed: int | None = 12345, size: tuple[int, int] | None = None,
                 cell: int = CELL) -> np.ndarray:
        """`size` = (h, w) of the map, default the image's. The 1.1 shuffle app passes the full-resolution
        original with size = the output size, so warping and resizing are one remap. seed=None: unseeded."""
        size = image.shape[:2] if size is None else (int(size[0]), int(size[1]))
        flow = shuffle_flow(size, image.shape[:2], np.random.RandomState(seed), cell)
        return HWC3(cv2.remap(image, flow, None, cv2.INTER_LINEAR))


class ColorShuffleDetector:
    """Per-pixel random recolouring: Y = A·L + B·(1 - L) from two contrast-stretched noise fields."""

    def __init__(self, device: str = "cpu", random_init: bool = False, files=None):
        pass

    def __call__(self, image: np.ndarray, seed: int | None = 12345) -> np.ndarray:
        rng = np.random.RandomState(seed)
        height, width = image.shape[:2]
        cell = rng.randint(64, 385)  # 64..384 inclusive, as Python's random.randint(64, 384) in the original
        a = make_noise_disk(height, width, 3, cell, rng)
        b = make_noise_disk(height, width, 3, cell, rng)
        mid = (a + b) / 2.0
        a = (mid + (a - mid) * 3.0).clip(0, 1)
        b = (mid + (b - mid) * 3.0).clip(0, 1)
        lum = image.astype(np.float32) / 255.0
        y = a * lum + b * (1 - lum)
        y -= y.min(axis=(0, 1), keepdims=True)
        y /= np.maximum(y.max(axis=(0, 1), keepdims=True), 1e-5)
        return (y * 255.0).clip(0, 255).astype(np.uint8)
