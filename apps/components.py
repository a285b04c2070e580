"""Gradio components whose server-side checks speak the user's language.

Gradio runs a component's own checks (slider ranges, dropdown choices, image decoding) before the app's
function, with messages that do not say which control failed. These subclasses keep the frontend of their
base class (`is_template`) and only reword those errors. (Gradio writes a `components.pyi` type stub next
to any module that subclasses a component, on import; it is generated, so it is git-ignored.)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image

from annotator.util import MAX_SIDE
from apps.errors import InvalidInput
from apps.images import image_notes, noted, read_image_noted


def refusal(message: str) -> gr.Error:
    """The page's (and the API's) answer to input it cannot use: the message, no traceback in the server log."""
    return gr.Error(message, title="Cannot run", print_exception=False)


def user_error(err: Exception) -> gr.Error:
    return refusal(str(err))


class CheckedImage(gr.Image):
    """An upload read with `apps.images.read_image_noted`: refused with a clear message when it is not a readable
    8-bit image of an accepted size (checked from the header, before the pixels are decoded). How it was
    converted (an animation's first frame) travels with the array (`apps.images.noted`): Gradio preprocesses
    outside the request's context, so the event function shows the notes (`show_notes`)."""

    is_template = True  # rendered by the frontend's Image component

    def preprocess(self, payload: Any) -> np.ndarray | None:
        if payload is None:
            return None
        if getattr(payload, "path", None) is None:  # a data: URL; gradio decodes it
            return super().preprocess(payload)
        try:
            image, notes = read_image_noted(payload.path, getattr(payload, "orig_name", None))
        except InvalidInput as err:
            raise user_error(err) from None
        return noted(image, notes)


def show_notes(*values: Any) -> None:
    """Show the notes of the uploads among `values` as warnings (in the page; in the API's log messages)."""
    for value in values:
        for note in image_notes(value):
            gr.Warning(note)


class CheckedEditor(gr.ImageEditor):
    """An ImageEditor whose files (background, layers, composite) are checked before Gradio decodes them, so that
    a corrupt or oversized one is refused with a message. The drawing canvas (a Sketchpad: no upload source)
    checks its layers' headers; an editor over an uploaded picture (the inpaint input) checks each file as
    `CheckedImage` checks an upload."""

    is_template = True  # rendered by the frontend's ImageEditor component, as gr.Sketchpad is

    def preprocess(self, payload: Any) -> Any:
        if payload is None:
            return None
        uploads = bool(self.sources)
        files = [getattr(payload, "background", None), getattr(payload, "composite", None),
                 *(getattr(payload, "layers", None) or [])]
        for file in files:
            path = getattr(file, "path", None)
            if path is not None and uploads:
                try:
                    read_image_noted(path, getattr(file, "orig_name", None))
                except InvalidInput as err:
                    raise user_error(err) from None
            elif path is not None:
                _check_drawing_file(Path(path))
        try:
            return super().preprocess(payload)
        except (OSError, ValueError, SyntaxError) as err:  # a file Gradio could not decode
            advice = "upload it again" if uploads else "clear the canvas and draw again"
            what = "the input image" if uploads else "the drawing"
            raise refusal(f"Could not read {what} ({type(err).__name__}); {advice}.") from None


def _check_drawing_file(path: Path) -> None:
    try:
        with PIL.Image.open(path) as im:
            width, height = im.size
    except PIL.Image.DecompressionBombError:
        width = height = MAX_SIDE + 1
    except (OSError, ValueError, SyntaxError):
        raise refusal("Could not read the drawing: a layer is not an image; clear the canvas and draw again.") from None
    if max(width, height) > MAX_SIDE:
        raise refusal(f"The drawing is larger than {MAX_SIDE} px per side; open a smaller canvas.")


def labelled(component: gr.components.Component, preprocess, payload: Any) -> Any:
    """Gradio's own range and choice checks (they run before the app's), with the control's label in the message."""
    try:
        return preprocess(payload)
    except gr.Error as err:
        raise refusal(f"{component.label}: {err.message}") from None


def number_payload(component: gr.components.Component, payload: Any) -> float | int:
    """What an API caller sent for a number: a number (or its text, "20"), finite; Gradio's range check would
    fail on anything else with a TypeError, so it is refused here with the control's label."""
    if payload is None:
        raise refusal(f"{component.label}: a value is required")
    if isinstance(payload, str):
        try:
            payload = float(payload.strip())
        except ValueError:
            raise refusal(f"{component.label}: expected a number, got {payload[:40]!r}") from None
    if isinstance(payload, (bool, np.bool_)) or not isinstance(payload, (int, float, np.integer, np.floating)):
        raise refusal(f"{component.label}: expected a number, got {_short(payload)}")
    if isinstance(payload, (float, np.floating)) and not math.isfinite(payload):
        raise refusal(f"{component.label}: expected a finite number, got {payload}")
    low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
    if low is not None and payload < low or high is not None and payload > high:
        raise refusal(f"{component.label}: {_short(payload)} is outside the allowed range {low}..{high}")
    return payload


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# Each subclass names its Gradio base directly: Gradio renders a template component with the frontend of its
# first base class, so the shared check is a function rather than a mixin.
class Slider(gr.Slider):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return labelled(self, super().preprocess, number_payload(self, payload))


class Number(gr.Number):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return labelled(self, super().preprocess, number_payload(self, payload))


class Dropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return labelled(self, super().preprocess, payload)


class Radio(gr.Radio):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return labelled(self, super().preprocess, payload)
