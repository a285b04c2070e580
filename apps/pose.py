"""Human pose (OpenPose body only, as the 1.0 model was trained: the hand option stays off)."""
from apps.spec import AppSpec, detect_resolution

APP = AppSpec(
    name="pose",
    title="Human Pose",
    annotator="openpose",
    weights=("cn10_openpose_fp16", "cn10_openpose", "cn11_openpose_fp16", "cn11_openpose"),
    detect_resolution=detect_resolution("OpenPose Resolution"),
)
