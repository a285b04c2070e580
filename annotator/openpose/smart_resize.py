"""OpenPose 1.1's resizing rule: area interpolation to shrink, Lanczos-4 to enlarge, channel by channel.

OpenCV resizes at most 4 channels at once, so maps with many channels (19 heatmaps, 38 PAFs, 22 hand
maps) go one channel at a time; 1- and 3-channel arrays in one call. Target sizes are truncated to int.
"""
from __future__ import annotations

import cv2
import numpy as np


def smart_resize(x: np.ndarray, size: tuple[float, float]) -> np.ndarray:
    """Resize H×W or H×W×C `x` to size = (height, width); the interpolation is chosen by
    k = (target height + width) / (source height + width): area if k < 1, else Lanczos-4."""
    target_h, target_w = size
    source_h, source_w = x.shape[:2]
    channels = 1 if x.ndim == 2 else x.shape[2]
    if channels not in (1, 3):
        return np.stack([smart_resize(x[:, :, c], size) for c in range(channels)], axis=2)
    k = float(target_h + target_w) / float(source_h + source_w)
    interpolation = cv2.INTER_AREA if k < 1 else cv2.INTER_LANCZOS4
    return cv2.resize(x, (int(target_w), int(target_h)), interpolation=interpolation)


def smart_resize_k(x: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """`smart_resize` by factors: target = (height · fy, width · fx)."""
    return smart_resize(x, (x.shape[0] * fy, x.shape[1] * fx))
