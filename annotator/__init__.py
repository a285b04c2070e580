"""Annotators: turn an image into a control map. See `annotator.registry` for the detector table.

    import annotator
    annotator.available()                   # ['canny', 'mlsd', 'hed', ...]
    det = annotator.load("hed")             # weights via weights.WeightFiles (annotator/ckpts, $ANNOTATOR_CKPTS, the hub)
    edge_map = det(image)                   # H×W×3 uint8, same H×W as image
    control = det.control_map(image, (H, W))  # detect, then resize the way the apps do
"""
from annotator.registry import REGISTRY, Annotator, DetectorSpec, Param, available, load
from annotator.util import HWC3, AnnotatorInputError, check_image, resize_image, resize_map

__all__ = [
    "REGISTRY", "Annotator", "DetectorSpec", "Param", "available", "load",
    "HWC3", "AnnotatorInputError", "check_image", "resize_image", "resize_map",
]
