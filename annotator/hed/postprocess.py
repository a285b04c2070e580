"""Edge thinning and the fake-scribble rule applied to HED maps."""
from __future__ import annotations

import cv2
import numpy as np

# 3×3 line-shaped neighbourhoods: horizontal, vertical, main diagonal, anti-diagonal
DIRECTIONS = (
    np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], np.uint8),
    np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], np.uint8),
    np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.uint8),
    np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.uint8),
)


def nms(x: np.ndarray, t: float, sigma: float) -> np.ndarray:
    """Non-maximum suppression of an edge map: 255 where the Gaussian-blurred map is a local
    maximum along at least one of four directions and exceeds t, else 0 (uint8, same shape)."""
    blurred = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    is_max = np.zeros(blurred.shape, dtype=bool)
    for kernel in DIRECTIONS:
        is_max |= cv2.dilate(blurred, kernel) == blurred
    return np.where(np.where(is_max, blurred, 0) > t, 255, 0).astype(np.uint8)


def fake_scribble(hed_map: np.ndarray) -> np.ndarray:
    """HED map (already at the output size) -> scribble-like strokes: thin, blur, binarise."""
    thin = nms(hed_map, 127, 3.0)
    blurred = cv2.GaussianBlur(thin, (0, 0), 3.0)
    return np.where(blurred > 4, 255, 0).astype(np.uint8)
