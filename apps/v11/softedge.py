"""Soft edges (control_v11p_sd15_softedge): PiDiNet or HED, each plain or "safe" (quantised to three levels,
the more robust choice)."""
from apps.v11.common import NO_PREPROCESSOR, Preprocessor, v11_app

APP = v11_app("v11_softedge", "Soft Edge", "cn11_softedge", preprocessors=(
    Preprocessor("SoftEdge_PIDI", "softedge_pidi"),
    Preprocessor("SoftEdge_PIDI_safe", "softedge_pidi", {"safe": True}),
    Preprocessor("SoftEdge_HED", "softedge_hed"),
    Preprocessor("SoftEdge_HED_safe", "softedge_hed", {"safe": True}),
    NO_PREPROCESSOR,
))
