"""Fake scribbles: HED edges thinned and thresholded into scribble-like strokes; shown inverted."""
from apps.spec import AppSpec, detect_resolution, invert

APP = AppSpec(
    name="fake_scribble",
    title="Fake Scribble Maps",
    annotator="fake_scribble",
    weights=("cn10_scribble_fp16", "cn10_scribble", "cn11_scribble_fp16", "cn11_scribble"),
    detect_resolution=detect_resolution("HED Resolution"),
    display=invert,
)
