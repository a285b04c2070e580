"""Helpers of the ControlNet 1.1 annotators: smooth random fields (shuffle) and the "safe" edge quantisation.

The edge thinning `nms` used by the scribble apps lives in `annotator.hed.postprocess`.
"""
from __future__ import annotations

import cv2
import numpy as np

Random = np.random.RandomState | np.random.Generator


def make_noise_disk(height: int, width: int, channels: int, cell: int, rng: Random) -> np.ndarray:
    """Smooth random field in [0, 1], float64 height×width×channels.

    Uniform noise on a coarse grid of (height // cell + 2)×(width // cell + 2) points, bicubic-upsampled
    to (height + 2·cell)×(width + 2·cell), the border `cell` cropped away, then min-max normalised over
    all channels jointly. Drawing from `np.random.RandomState(seed)` reproduces the original's draws
    from numpy's global generator after `np.random.seed(seed)`.
    """
    coarse = rng.uniform(0.0, 1.0, size=(height // cell + 2, width // cell + 2, channels))
    fine = cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = fine[cell:cell + height, cell:cell + width]
    noise = noise - noise.min()
    noise = noise / noise.max()
    return noise.reshape(height, width, channels)  # OpenCV drops a single channel axis


def safe_step(x: np.ndarray, step: int = 2) -> np.ndarray:
    """Quantise an edge probability map to step + 1 levels: floor(x·(step + 1)) / step, in float32.

    For x in [0, 1] and step 2: [0, 1/3) -> 0, [1/3, 2/3) -> 0.5, [2/3, 1) -> 1, 1 -> 1.5; after the
    detectors' ×255, clip and uint8 cast only the values 0, 127 and 255 remain. The product is taken in
    float32 and truncated toward zero as the original does (an int32 cast, not a floor of a float64).
    """
    scaled = x.astype(np.float32) * np.float32(step + 1)
    return scaled.astype(np.int32).astype(np.float32) / np.float32(step)
