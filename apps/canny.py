"""Canny edges: OpenCV Canny on the image-resolution RGB image; the page shows the inverted map."""
from apps.spec import AppSpec, detector_params, invert

APP = AppSpec(
    name="canny",
    title="Canny Edge Maps",
    annotator="canny",
    weights=("cn10_canny_fp16", "cn10_canny", "cn11_canny_fp16", "cn11_canny"),
    params=detector_params("canny"),
    display=invert,
)
