"""Control inputs the ControlNet 1.1 apps build themselves (no detector): the tile hint and the inpaint mask.

Sizes are (H, W) = the shape of `resize_image(original, image_resolution)` (multiples of 64). What generation
does with them (the image's latent, the latent keep-mask, the −1 hint, the pasting) is in `cldm.img2img`.
"""
from __future__ import annotations

import cv2
import numpy as np

from annotator.util import HWC3

__all__ = ["inpaint_mask", "tile_control"]


def tile_control(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Tile hint: the original image bilinearly resized to size = (H, W); no blur, no down-sampling, so a
    small input is simply up-sampled."""
    height, width = size
    return cv2.resize(HWC3(image), (width, height), interpolation=cv2.INTER_LINEAR)


def inpaint_mask(mask: np.ndarray, size: tuple[int, int], blur: float) -> np.ndarray:
    """The soft inpaint mask (H×W float32 in [0, 1], 1 = repaint) from the drawn mask at any size (2-D or
    channels-last; channel 0 is used, 255 = repaint): resized bilinearly as uint8 to size = (H, W), /255, then
    Gaussian-blurred with sigma `blur` ("Mask Blur", 0.1..7; kernel size derived from sigma)."""
    height, width = size
    channel = mask if mask.ndim == 2 else mask[:, :, 0]
    pixel = cv2.resize(np.ascontiguousarray(channel), (width, height), interpolation=cv2.INTER_LINEAR)
    soft = cv2.GaussianBlur(pixel.astype(np.float32) / 255.0, (0, 0), blur)
    return soft.clip(0.0, 1.0)  # the blur's rounding may step past 1 by an ulp
