"""MiDaS depth maps (near is bright)."""
from apps.spec import AppSpec, detect_resolution

APP = AppSpec(
    name="depth",
    title="Depth Maps",
    annotator="depth",
    weights=("cn10_depth_fp16", "cn10_depth", "cn11_depth_fp16", "cn11_depth"),
    detect_resolution=detect_resolution("Depth Resolution", 384),
)
