"""OpenPose 1.1 drawing (the openpose 1.1 ControlNet learned it): all limbs opaque, the canvas darkened
to 0.6, then all joints; then hands; then face landmarks. Coordinates are fractions of W and H."""
from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import cv2
import numpy as np

from annotator.openpose.body import LIMBS, NUM_PARTS
from annotator.openpose.draw import COLORS, DRAWN_LIMBS, HAND_EDGES, HAND_POINT_COLOR, STICK_WIDTH

LIMB_DARKENING = 0.6
JOINT_RADIUS = 4
HAND_LINE_WIDTH = 2
HAND_POINT_RADIUS = 4
FACE_POINT_RADIUS = 3
FACE_POINT_COLOR = (255, 255, 255)
MIN_PIXEL = 0.01  # a point is drawn when both pixel coordinates (truncated) exceed this, i.e. are ≥ 1


def draw_bodies(canvas: np.ndarray, candidate: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Limb i of every person as a filled ellipse (half-width 4) in colour i, opaque, in limb-major order;
    then canvas × 0.6 (truncated); then every joint as a disc of radius 4 in full colour."""
    height, width = canvas.shape[:2]
    for limb in range(DRAWN_LIMBS):
        for person in subset:
            ids = person[list(LIMBS[limb])]
            if -1 in ids:
                continue
            xs = candidate[ids.astype(int), 0] * float(width)
            ys = candidate[ids.astype(int), 1] * float(height)
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            centre = (int(np.mean(xs)), int(np.mean(ys)))
            polygon = cv2.ellipse2Poly(centre, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, COLORS[limb])
    canvas = (canvas * LIMB_DARKENING).astype(np.uint8)
    for part in range(NUM_PARTS):
        for person in subset:
            index = int(person[part])
            if index == -1:
                continue
            x, y = candidate[index][:2]
            cv2.circle(canvas, (int(x * width), int(y * height)), JOINT_RADIUS, COLORS[part], thickness=-1)
    return canvas


def _pixels(points: np.ndarray, width: int, height: int) -> list[tuple[int, int]]:
    points = np.asarray(points, dtype=np.float64)
    return [(int(x * width), int(y * height)) for x, y in points]


def _visible(*xy: int) -> bool:
    return all(v > MIN_PIXEL for v in xy)


def draw_hands(canvas: np.ndarray, hands: Sequence[np.ndarray]) -> np.ndarray:
    """Per hand: 20 edges (thickness 2, hue edge/20) between visible keypoints, then blue discs (radius 4)."""
    height, width = canvas.shape[:2]
    for points in hands:
        pixels = _pixels(points, width, height)
        for i, (a, b) in enumerate(HAND_EDGES):
            if _visible(*pixels[a], *pixels[b]):
                color = [255 * c for c in colorsys.hsv_to_rgb(i / float(len(HAND_EDGES)), 1.0, 1.0)]
                cv2.line(canvas, pixels[a], pixels[b], color, thickness=HAND_LINE_WIDTH)
        for xy in pixels:
            if _visible(*xy):
                cv2.circle(canvas, xy, HAND_POINT_RADIUS, HAND_POINT_COLOR, thickness=-1)
    return canvas


def draw_faces(canvas: np.ndarray, faces: Sequence[np.ndarray]) -> np.ndarray:
    """Every visible landmark as a white disc of radius 3."""
    height, width = canvas.shape[:2]
    for points in faces:
        for xy in _pixels(points, width, height):
            if _visible(*xy):
                cv2.circle(canvas, xy, FACE_POINT_RADIUS, FACE_POINT_COLOR, thickness=-1)
    return canvas


def draw_pose(candidate: np.ndarray, subset: np.ndarray, hands: Sequence[np.ndarray],
              faces: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """The 1.1 pose map on a black H×W×3 canvas: bodies, then hands, then faces (RGB colours)."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    subset = np.asarray(subset, dtype=np.float64).reshape(-1, NUM_PARTS + 2)
    canvas = draw_bodies(canvas, np.asarray(candidate, dtype=np.float64), subset)
    return draw_faces(draw_hands(canvas, hands), faces)
