"""ADE20K segmentation maps (UniFormer)."""
from apps.spec import AppSpec, detect_resolution

APP = AppSpec(
    name="seg",
    title="Segmentation Maps",
    annotator="seg",
    weights=("cn10_seg_fp16", "cn10_seg", "cn11_seg_fp16", "cn11_seg"),
    detect_resolution=detect_resolution("Segmentation Resolution"),
)
