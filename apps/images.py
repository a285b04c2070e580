"""Reading what users upload or draw into H×W×3 uint8 images, refusing what cannot be used with a message."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL.Image
import PIL.ImageOps

from annotator.scribble import scribble_from_canvas
from annotator.util import MAX_SIDE, AnnotatorInputError, check_image
from apps.errors import InvalidInput

ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
REFUSED_MODES = ("I", "F")  # 32-bit integer and float pixels (16-bit PNGs open as I;16…)


def read_image(path: str | Path, name: str | None = None) -> np.ndarray:
    """An image file as H×W×3 (or ×4 with alpha) uint8, EXIF rotation applied; InvalidInput when it is not a
    readable 8-bit image or is larger than MAX_SIDE per side (checked from the header, before decoding)."""
    name = name or Path(path).name
    try:
        with PIL.Image.open(path) as im:
            width, height = im.size
            if max(width, height) > MAX_SIDE:
                raise InvalidInput(f"{name} is {width}×{height} px; at most {MAX_SIDE} px per side is accepted. Resize it first.")
            if im.mode.startswith(REFUSED_MODES):
                raise InvalidInput(f"{name} has {im.mode} pixels (16/32-bit or floating point); only 8-bit images are "
                                   "accepted. Save it as an 8-bit PNG or JPEG.")
            im = PIL.ImageOps.exif_transpose(im)
            alpha = im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)
            return np.array(im.convert("RGBA" if alpha else "RGB"))
    except InvalidInput:
        raise
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise InvalidInput(f"Could not read {name} as an image: the file is corrupt, truncated or not an image "
                           f"({type(err).__name__}). Use a PNG, JPEG or WebP file.") from None


def input_image(image: Any, canvas: bool = False) -> np.ndarray:
    """A page's input as H×W×3 uint8: an upload, or (`canvas`) the stroke map drawn on the drawing canvas."""
    if image is None:
        raise InvalidInput("No drawing: open the canvas and draw something first." if canvas
                           else "No input image: upload an image first.")
    try:
        if canvas:
            # The canvas gives white strokes on black; the scribble detector wants dark strokes on paper.
            return 255 - scribble_from_canvas(image)
        return check_image(image)
    except AnnotatorInputError as err:
        raise InvalidInput(f"Input image: {err}") from None


@dataclass(frozen=True)
class MaskedUpload:
    """An inpainting input: the image editor's value (the photo as background, the painted strokes as layers)
    and an optional uploaded mask image (white = repaint)."""

    editor: Any
    mask: Any = None


def masked_input(value: MaskedUpload) -> tuple[np.ndarray, np.ndarray]:
    """(image H×W×3 uint8, mask H×W uint8 with 255 = repaint): the strokes painted on the image (any layer pixel
    that is not transparent) together with the uploaded mask (its brightness, times its alpha if it has one),
    resized to the image. InvalidInput when there is no image or nothing is masked."""
    editor = value.editor if isinstance(value.editor, dict) else {"background": value.editor}
    background = _pixels(editor.get("background"))
    if background is None:
        background = _pixels(editor.get("composite"))
    if background is None:
        raise InvalidInput("No input image: upload an image first.")
    try:
        image = check_image(background)
    except AnnotatorInputError as err:
        raise InvalidInput(f"Input image: {err}") from None
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    for layer in filter(lambda a: a is not None, map(_pixels, editor.get("layers") or [])):
        if layer.ndim == 3 and layer.shape[2] == 4:
            mask = np.maximum(mask, _fit(np.where(layer[:, :, 3] > 0, 255, 0).astype(np.uint8), height, width))
    uploaded = _pixels(value.mask)
    if uploaded is not None:
        mask = np.maximum(mask, _fit(mask_brightness(uploaded), height, width))
    if not mask.any():
        raise InvalidInput("No mask: paint over the area to repaint (or upload a mask image, white = repaint).")
    return image, mask


def mask_brightness(mask: np.ndarray) -> np.ndarray:
    """An uploaded mask as H×W uint8: the brightest channel, times alpha where there is one (transparent = keep)."""
    if mask.dtype != np.uint8 or mask.ndim not in (2, 3) or mask.ndim == 3 and mask.shape[2] not in (1, 2, 3, 4):
        raise InvalidInput(f"Mask image: expected an 8-bit grey, RGB or RGBA image, got {mask.dtype} {mask.shape}")
    if mask.ndim == 2:
        return mask
    colour = mask[:, :, : 1 if mask.shape[2] <= 2 else 3].max(axis=2)
    if mask.shape[2] in (2, 4):
        return (colour.astype(np.uint16) * mask[:, :, -1] // 255).astype(np.uint8)
    return colour


def _pixels(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    x = np.asarray(x)
    return x if x.size else None


def _fit(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape[:2] == (height, width):
        return mask
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
