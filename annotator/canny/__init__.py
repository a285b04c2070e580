"""Canny edges: white edges on black."""
import cv2
import numpy as np

from annotator.util import HWC3


class CannyDetector:
    def __call__(self, image: np.ndarray, low_threshold: int = 100, high_threshold: int = 200) -> np.ndarray:
        # On the 3-channel image on purpose: OpenCV then uses the strongest gradient over the
        # channels, which is what the trained canny ControlNet saw (not Canny on grey).
        return HWC3(cv2.Canny(image, low_threshold, high_threshold))
