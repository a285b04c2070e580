"""Scribbles drawn on a white canvas in the page (black brush, eraser, undo)."""
from annotator.registry import Param
from apps.spec import AppSpec, invert

APP = AppSpec(
    name="scribble_interactive",
    title="Interactive Scribbles",
    annotator="scribble",
    weights=("cn10_scribble_fp16", "cn10_scribble", "cn11_scribble_fp16", "cn11_scribble"),
    display=invert,
    canvas=(Param("canvas_width", "Canvas Width", 512, 256, 1024, 1),
            Param("canvas_height", "Canvas Height", 512, 256, 1024, 1)),
)
