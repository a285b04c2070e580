"""Scribbles: user drawings turned into white strokes on black.

Two sources:
* an uploaded drawing (`ScribbleDetector`): dark strokes on light paper; a pixel is a stroke
  where the minimum over its RGB channels is < 127;
* the interactive canvas (`scribble_from_canvas`): the value of a Gradio 6 Sketchpad/ImageEditor.
"""
from __future__ import annotations

import numpy as np

from annotator.util import AnnotatorInputError, check_image

DARK = 127  # the original upload app's threshold


def strokes_to_map(mask: np.ndarray) -> np.ndarray:
    """Boolean H×W stroke mask -> H×W×3 uint8, 255 on strokes, 0 elsewhere."""
    return np.repeat(np.where(mask, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2)


def dark_pixels(image: np.ndarray) -> np.ndarray:
    return image.min(axis=2) < DARK


class ScribbleDetector:
    def __call__(self, image: np.ndarray) -> np.ndarray:
        return strokes_to_map(dark_pixels(image))


def _as_array(x) -> np.ndarray | None:
    if x is None:
        return None
    x = np.asarray(x)  # numpy arrays, or PIL images when the editor uses type="pil"
    return x if x.size else None


def scribble_from_canvas(value) -> np.ndarray:
    """Stroke map (H×W×3 uint8, white strokes on black) from a Sketchpad/ImageEditor value.

    `value` is the editor's dict {"background", "layers", "composite"} (numpy or PIL images).
    Strokes are the pixels any layer covers (alpha > 0), whatever their colour. When there are
    no RGBA layers (e.g. a value built by a script), strokes are the dark pixels of the composite
    (RGBA composited over white first), i.e. the upload rule. An untouched canvas gives all black.
    """
    if not isinstance(value, dict):
        raise AnnotatorInputError(f"expected the canvas value (a dict with 'layers'/'composite'), got {type(value).__name__}")
    layers = [a for a in map(_as_array, value.get("layers") or []) if a is not None]
    rgba = [a for a in layers if a.ndim == 3 and a.shape[2] == 4]
    if rgba:
        if len({check_image(a).shape for a in rgba}) > 1:
            raise AnnotatorInputError("canvas layers have different sizes")
        return strokes_to_map(np.any([a[:, :, 3] > 0 for a in rgba], axis=0))
    composite = _as_array(value.get("composite"))
    if composite is None:
        composite = _as_array(value.get("background"))
    if composite is None:
        raise AnnotatorInputError("the canvas is empty: draw something first")
    return strokes_to_map(dark_pixels(check_image(composite)))
