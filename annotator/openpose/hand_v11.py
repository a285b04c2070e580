"""OpenPose 1.1 hand estimator: the crop is blurred, run at four fixed square sizes, averaged at 128×128,
and the keypoints (1.0's component rule) are scaled back to the crop."""
from __future__ import annotations

import cv2
import numpy as np

from annotator.openpose.hand import hand_keypoints
from annotator.openpose.maps import Runner
from annotator.openpose.maps_v11 import HAND_MAP_SIZE, hand_maps

BLUR_SIGMA = 0.8


def hand_points(run: Runner, bgr_crop: np.ndarray) -> np.ndarray:
    """(21, 2) int (x, y) in crop pixels, truncated; (0, 0) where a keypoint has no peak."""
    height, width = bgr_crop.shape[:2]
    points = hand_keypoints(hand_maps(run, cv2.GaussianBlur(bgr_crop, (0, 0), BLUR_SIGMA)))
    return np.array([(int(float(x) * float(width) / float(HAND_MAP_SIZE)),
                      int(float(y) * float(height) / float(HAND_MAP_SIZE))) for x, y in points], dtype=np.int64)

