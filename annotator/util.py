"""Image helpers shared by every annotator and app: input checks, HWC3, resize_image, resize_map."""
from __future__ import annotations

import cv2
import numpy as np

MIN_SIDE = 16  # smallest accepted input side: HED pools four times and needs a pixel left
MAX_SIDE = 4096  # largest accepted input side (pixels); larger uploads are refused, not resized
MAX_RESIZED_SIDE = 16384  # resize_image refuses targets beyond this (extreme aspect ratios)

INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR}


class AnnotatorInputError(ValueError):
    """The caller passed something an annotator cannot work on; the message says what and why."""


def HWC3(x: np.ndarray) -> np.ndarray:
    """uint8 image with 1, 3 or 4 channels (or 2-D) -> H×W×3; RGBA is composited over white."""
    if x.dtype != np.uint8:
        raise AnnotatorInputError(f"expected a uint8 image, got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
        raise AnnotatorInputError(f"expected H×W, H×W×1, H×W×3 or H×W×4, got shape {x.shape}")
    channels = x.shape[2]
    if channels == 3:
        return x
    if channels == 1:
        return np.concatenate([x, x, x], axis=2)
    colour = x[:, :, :3].astype(np.float32)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    return (colour * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def check_image(img) -> np.ndarray:
    """Validate an input image and return it as contiguous H×W×3 uint8 (RGB)."""
    if not isinstance(img, np.ndarray):
        raise AnnotatorInputError(f"expected a numpy image, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise AnnotatorInputError(f"expected a uint8 image (values 0..255), got dtype {img.dtype}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise AnnotatorInputError(
            f"expected an image of shape H×W, H×W×1, H×W×3 or H×W×4, got shape {img.shape}"
        )
    height, width = img.shape[:2]
    if height == 0 or width == 0:
        raise AnnotatorInputError(f"the image is empty (shape {img.shape})")
    if min(height, width) < MIN_SIDE:
        raise AnnotatorInputError(
            f"the image is {width}×{height} px; at least {MIN_SIDE} px per side is needed"
        )
    if max(height, width) > MAX_SIDE:
        raise AnnotatorInputError(
            f"the image is {width}×{height} px; at most {MAX_SIDE} px per side is accepted"
        )
    return np.ascontiguousarray(HWC3(img))


def resize_image(input_image: np.ndarray, resolution: float) -> np.ndarray:
    """Scale so the short side is about `resolution`, both sides rounded to multiples of 64.

    Lanczos-4 when enlarging, area interpolation when shrinking (the original's rule; numpy
    round-half-to-even on side/64).
    """
    height, width = input_image.shape[:2]
    k = float(resolution) / min(height, width)
    new_h = int(np.round(height * k / 64.0)) * 64
    new_w = int(np.round(width * k / 64.0)) * 64
    if min(new_h, new_w) < 64 or max(new_h, new_w) > MAX_RESIZED_SIDE:
        raise AnnotatorInputError(
            f"cannot resize a {width}×{height} image to resolution {resolution}: "
            f"the result would be {new_w}×{new_h}"
        )
    interpolation = cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA
    return cv2.resize(input_image, (new_w, new_h), interpolation=interpolation)


def resize_map(detected_map: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize a control map to size = (H, W) with "nearest", "bilinear" or "none".

    "none" is for maps made at the final size already (canny, scribble); a size mismatch then is a bug.
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize a map to {size}")
    if interpolation == "none":
        if detected_map.shape[:2] != (height, width):
            raise ValueError(
                f"map is {detected_map.shape[:2]} but {size} was asked with interpolation 'none'"
            )
        return detected_map
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; use nearest, bilinear or none")
    return cv2.resize(detected_map, (width, height), interpolation=INTERPOLATIONS[interpolation])
