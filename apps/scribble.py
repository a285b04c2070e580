"""Uploaded scribbles: dark strokes on light paper become white strokes on black; the page shows them inverted."""
from apps.spec import AppSpec, invert

APP = AppSpec(
    name="scribble",
    title="Scribble Maps",
    annotator="scribble",
    weights=("cn10_scribble_fp16", "cn10_scribble", "cn11_scribble_fp16", "cn11_scribble"),
    display=invert,
)
