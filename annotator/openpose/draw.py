"""Pose drawing with the original's colours, sizes and blending (the pose ControlNet learned them)."""
from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from annotator.openpose.body import LIMBS, NUM_PARTS

STICK_WIDTH = 4
DRAWN_LIMBS = 17  # the two ear-shoulder links are never drawn
# One colour per keypoint (and per limb, same index); the first keypoint is pure red in the RGB map.
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)
HAND_POINT_COLOR = (0, 0, 255)


def draw_body(canvas: np.ndarray, candidate: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Keypoint discs (radius 4), then limbs as ellipses (half-width 4) blended in at 0.6 one by one."""
    for part in range(NUM_PARTS):
        for person in subset:
            if person[part] != -1:
                x, y = candidate[int(person[part])][:2]
                cv2.circle(canvas, (int(x), int(y)), 4, COLORS[part], thickness=-1)
    for limb in range(DRAWN_LIMBS):
        for person in subset:
            ids = person[list(LIMBS[limb])]
            if -1 in ids:
                continue
            (xa, ya), (xb, yb) = candidate[ids.astype(int), :2]
            length = math.sqrt((ya - yb) ** 2 + (xa - xb) ** 2)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            centre = (int(np.mean([xa, xb])), int(np.mean([ya, yb])))
            polygon = cv2.ellipse2Poly(centre, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            overlay = canvas.copy()
            cv2.fillConvexPoly(overlay, polygon, COLORS[limb])
            canvas = cv2.addWeighted(canvas, 0.4, overlay, 0.6, 0)
    return canvas


def draw_hands(canvas: np.ndarray, all_points: list[np.ndarray]) -> np.ndarray:
    """Per hand: 20 rainbow edges (thickness 2) between found keypoints, then blue dots (radius 4).

    A keypoint with a 0 coordinate is missing. Unlike the original, missing keypoints get no dot
    (it drew them at the image corner); the pose ControlNet was trained without hands.
    """
    for points in all_points:
        found = np.all(points != 0, axis=1)
        for i, (a, b) in enumerate(HAND_EDGES):
            if found[a] and found[b]:
                color = [255 * c for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)]
                cv2.line(canvas, tuple(map(int, points[a])), tuple(map(int, points[b])), color, thickness=2)
        for (x, y), ok in zip(points, found):
            if ok:
                cv2.circle(canvas, (int(x), int(y)), 4, HAND_POINT_COLOR, thickness=-1)
    return canvas
