"""Hough (M-LSD) line maps; the page shows the map dilated once and inverted (the control is undilated)."""
import cv2
import numpy as np

from apps.spec import AppSpec, detect_resolution, detector_params


def dilate_invert(detected_map: np.ndarray) -> np.ndarray:
    return 255 - cv2.dilate(detected_map, np.ones((3, 3), np.uint8), iterations=1)


APP = AppSpec(
    name="mlsd",
    title="Hough Line Maps",
    annotator="mlsd",
    weights=("cn10_mlsd_fp16", "cn10_mlsd", "cn11_mlsd_fp16", "cn11_mlsd"),
    detect_resolution=detect_resolution("Hough Resolution"),
    params=detector_params("mlsd"),
    display=dilate_invert,
)
