"""Gradio components whose server-side checks speak the user's language.

Gradio runs a component's own checks (slider ranges, dropdown choices, image decoding) before the app's
function, with messages that do not say which control failed. These subclasses keep the frontend of their
base class (`is_template`) and only reword those errors. (Gradio writes a `components.pyi` type stub next
to any module that subclasses a component, on import; it is generated, so it is git-ignored.)
"""
from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from apps.errors import InvalidInput
from apps.images import read_image


def user_error(err: Exception) -> gr.Error:
    return gr.Error(str(err), title="Cannot run")


class CheckedImage(gr.Image):
    """An upload read with `apps.images.read_image`: refused with a clear message when it is not a readable
    8-bit image of an accepted size (checked from the header, before the pixels are decoded)."""

    is_template = True  # rendered by the frontend's Image component

    def preprocess(self, payload: Any) -> np.ndarray | None:
        if payload is None:
            return None
        if getattr(payload, "path", None) is None:  # a data: URL; gradio decodes it
            return super().preprocess(payload)
        try:
            return read_image(payload.path, getattr(payload, "orig_name", None))
        except InvalidInput as err:
            raise user_error(err) from None


def labelled(component: gr.components.Component, preprocess, payload: Any) -> Any:
    """Gradio's own range and choice checks (they run before the app's), with the control's label in the message."""
    try:
        return preprocess(payload)
    except gr.Error as err:
        raise gr.Error(f"{component.label}: {err.message}", title="Cannot run") from None


# Each subclass names its Gradio base directly: Gradio renders a template component with the frontend of its
# first base class, so the shared check is a function rather than a mixin.
class Slider(gr.Slider):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return labelled(self, super().preprocess, payload)


class Number(gr.Number):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return labelled(self, super().preprocess, payload)


class Dropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return labelled(self, super().preprocess, payload)


class Radio(gr.Radio):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return labelled(self, super().preprocess, payload)
