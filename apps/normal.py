"""Normal maps from MiDaS depth. The map is shown as (x, y, z) but fed to the network reversed (z, y, x),
as the 1.0 model was trained."""
import numpy as np

from apps.spec import AppSpec, detect_resolution, detector_params


def reverse_channels(detected_map: np.ndarray) -> np.ndarray:
    return detected_map[:, :, ::-1]


APP = AppSpec(
    name="normal",
    title="Normal Maps",
    annotator="normal",
    weights=("cn10_normal_fp16", "cn10_normal"),
    detect_resolution=detect_resolution("Normal Resolution", 384),
    params=detector_params("normal", "bg_threshold"),
    to_control=reverse_channels,
)
