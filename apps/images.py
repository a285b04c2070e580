"""Reading what users upload or draw into H×W×3 uint8 images, refusing what cannot be used with a message.

Accepted and converted: greyscale, palette (with or without transparency), RGBA/LA (composited over white
later), CMYK (to RGB), 1-bit, an EXIF orientation (applied), an animated GIF/WebP/PNG (its first frame, with a
note), any extension (the content decides). Refused, each with its own sentence: an empty file, a file that is
not an image (text, HTML, SVG), a truncated or corrupt one, 16/32-bit and floating-point pixels, more than
MAX_SIDE px per side (read from the header, before any pixel is decoded, so a small file declaring
50 000×50 000 px costs nothing).
"""
from __future__ import annotations

import struct
import warnings
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
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError, struct.error)
VECTOR_MARKS = (b"<svg", b"<?xml", b"<!DOCTYPE svg")


def _not_an_image(path: Path, name: str) -> InvalidInput:
    head = path.read_bytes()[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(VECTOR_MARKS) and b"<svg" in head.lower() or path.suffix.lower() == ".svg":
        return InvalidInput(f"{name} is an SVG (vector) drawing; only pixel images are accepted: export it as PNG.")
    if head[:1] == b"<" or head.isascii() and head.strip():
        return InvalidInput(f"{name} is a text file, not an image; upload a PNG, JPEG or WebP picture.")
    return InvalidInput(f"Could not read {name}: it is not in an image format the server reads (PNG, JPEG, WebP, GIF, "
                        "BMP, TIFF); upload a PNG, JPEG or WebP picture.")


def read_image_noted(path: str | Path, name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """An image file as H×W×3 (or ×4 with alpha) uint8, EXIF rotation applied, and the notes a user should
    see about how it was converted (an animation's first frame); InvalidInput when it cannot be used."""
    path = Path(path)
    name = name or path.name
    try:
        size = path.stat().st_size
    except OSError:
        raise InvalidInput(f"{name} could not be found on the server; upload it again.") from None
    if size == 0:
        raise InvalidInput(f"{name} is empty (0 bytes); upload the image again.")
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            im_file = PIL.Image.open(path)
        with im_file as im:
            width, height = im.size
            if max(width, height) > MAX_SIDE:
                raise InvalidInput(f"{name} is {width}×{height} px; at most {MAX_SIDE} px per side is accepted. "
                                   "Resize it first.")
            if im.mode.startswith(REFUSED_MODES):
                raise InvalidInput(f"{name} has {im.mode} pixels (16/32-bit or floating point); only 8-bit images "
                                   "are accepted. Save it as an 8-bit PNG or JPEG.")
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                notes.append(f"{name} is animated ({frames} frames): its first frame is used.")
            im = PIL.ImageOps.exif_transpose(im)
            alpha = im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)
            try:
                return np.array(im.convert("RGBA" if alpha else "RGB")), notes
            except ValueError as err:
                if "conversion" not in str(err):
                    raise
                raise InvalidInput(f"{name} has {im.mode} pixels, which cannot be turned into RGB; save it as an "
                                   "8-bit RGB PNG or JPEG.") from None
    except InvalidInput:
        raise
    except PIL.Image.DecompressionBombError:
        raise InvalidInput(f"{name} declares a size of hundreds of millions of pixels; at most {MAX_SIDE} px per "
                           "side is accepted. Resize it first.") from None
    except PIL.UnidentifiedImageError:
        raise _not_an_image(path, name) from None
    except DECODE_ERRORS as err:
        raise InvalidInput(f"Could not read {name}: the file is truncated or corrupt ({type(err).__name__}); "
                           "save or download it again.") from None


class NotedImage(np.ndarray):
    """An upload as read (an H×W×C uint8 array) that carries the notes on how it was converted, for the page
    to show once the request runs."""

    notes: tuple[str, ...] = ()


def noted(image: np.ndarray, notes: list[str]) -> np.ndarray:
    """`image`, carrying `notes` (see `image_notes`) when there are any."""
    if not notes:
        return image
    carrier = image.view(NotedImage)
    carrier.notes = tuple(notes)
    return carrier


def image_notes(value: Any) -> tuple[str, ...]:
    """The notes an input value carries (none for anything but a `NotedImage`)."""
    return getattr(value, "notes", ()) if isinstance(value, NotedImage) else ()


def read_image(path: str | Path, name: str | None = None) -> np.ndarray:
    """`read_image_noted` without the notes."""
    return read_image_noted(path, name)[0]


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
