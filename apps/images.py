"""Reading what users upload or draw into H×W×3 uint8 images, refusing what cannot be used with a message."""
from __future__ import annotations

from pathlib import Path
from typing import Any

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
