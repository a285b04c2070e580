"""Hands: square boxes from the body keypoints, then one keypoint per hand-heatmap channel."""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter, label

NUM_HAND_KEYPOINTS = 21
HAND_THRESHOLD = 0.05
HAND_SCALES = (0.5, 1.0, 1.5, 2.0)
MIN_BOX = 20
# (shoulder, elbow, wrist) COCO-18 ids and whether it is the left hand, in the original's order
ARMS = (((5, 6, 7), True), ((2, 3, 4), False))


def hand_boxes(candidate: np.ndarray, subset: np.ndarray, height: int, width: int) -> list[tuple[int, int, int, bool]]:
    """(x, y, side, is_left) square boxes: centred a third of the forearm beyond the wrist, side
    1.5 × max(forearm, 0.9 × upper arm), clipped to the image, kept when the side is ≥ 20 px."""
    boxes = []
    for person in subset.astype(int):
        for ids, is_left in ARMS:
            if np.any(person[list(ids)] == -1):
                continue
            (x1, y1), (x2, y2), (x3, y3) = (candidate[i][:2] for i in person[list(ids)])
            side = 1.5 * max(_distance(x3 - x2, y3 - y2), 0.9 * _distance(x2 - x1, y2 - y1))
            x = max(x3 + 0.33 * (x3 - x2) - side / 2, 0)
            y = max(y3 + 0.33 * (y3 - y2) - side / 2, 0)
            side = min(side, width - x, height - y)
            if side >= MIN_BOX:
                boxes.append((int(x), int(y), int(side), is_left))
    return boxes


def _distance(dx: float, dy: float) -> float:
    return math.sqrt(dx * dx + dy * dy)  # not math.hypot: box sides are truncated, keep the original's rounding


def hand_keypoints(heatmaps: np.ndarray) -> np.ndarray:
    """(21, 2) int (x, y) from H×W×22 heatmaps: per channel, smooth (sigma 3), threshold 0.05, keep
    the 8-connected component with the largest raw mass, take its argmax; (0, 0) when none."""
    points = np.zeros((NUM_HAND_KEYPOINTS, 2), dtype=int)
    for part in range(NUM_HAND_KEYPOINTS):
        raw = heatmaps[:, :, part]
        labels, count = label(gaussian_filter(raw, sigma=3) > HAND_THRESHOLD, structure=np.ones((3, 3)))
        if count == 0:
            continue
        best = 1 + int(np.argmax([np.sum(raw[labels == i]) for i in range(1, count + 1)]))
        y, x = np.unravel_index(np.argmax(np.where(labels == best, raw, 0)), raw.shape)
        points[part] = x, y
    return points


def to_image_coordinates(points: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Box-relative keypoints -> image coordinates; a 0 coordinate means 'missing' and stays 0."""
    return np.stack([np.where(points[:, 0] == 0, 0, points[:, 0] + x0),
                     np.where(points[:, 1] == 0, 0, points[:, 1] + y0)], axis=1)
