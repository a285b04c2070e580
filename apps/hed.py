"""HED soft edges (the ControlNet 1.1 soft-edge weights are offered too)."""
from apps.spec import AppSpec, detect_resolution

APP = AppSpec(
    name="hed",
    title="HED Maps",
    annotator="hed",
    weights=("cn10_hed_fp16", "cn10_hed", "cn11_softedge_fp16", "cn11_softedge"),
    detect_resolution=detect_resolution("HED Resolution"),
)
