"""Depth and normal images from the raw MiDaS prediction (relative inverse depth, near = large)."""
from __future__ import annotations

import math

import cv2
import numpy as np

DEFAULT_ALPHA = 2 * math.pi  # z component of the normal before normalisation
DEFAULT_BG_THRESHOLD = 0.1  # the detector default; the normal app's slider starts at 0.4


def normalized_depth(depth: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1] (float32); a constant prediction gives zeros."""
    shifted = depth.astype(np.float32) - depth.min()
    peak = shifted.max()
    return shifted / peak if peak > 0 else np.zeros_like(shifted)


def depth_image(depth: np.ndarray) -> np.ndarray:
    """H×W uint8, near = bright."""
    return (normalized_depth(depth) * 255.0).clip(0, 255).astype(np.uint8)


def normal_image(depth: np.ndarray, alpha: float = DEFAULT_ALPHA, bg_threshold: float = DEFAULT_BG_THRESHOLD) -> np.ndarray:
    """H×W×3 uint8 normals (x, y, z) from the raw prediction's 3×3 Sobel gradients and a constant z = alpha.

    Where the normalised depth is below `bg_threshold` the x, y parts are zeroed (background faces the
    viewer). The raw MiDaS scale varies per image, so the tilt does too. The normal app feeds this map
    to its ControlNet with the channels reversed (z, y, x); that quirk belongs to the app, not here.
    """
    depth = depth.astype(np.float32)
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    background = normalized_depth(depth) < bg_threshold
    x[background] = 0
    y[background] = 0
    normal = np.stack([x, y, np.full_like(x, alpha)], axis=2)
    normal /= np.sum(normal ** 2.0, axis=2, keepdims=True) ** 0.5
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)
