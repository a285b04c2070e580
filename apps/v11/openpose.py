"""Human pose (control_v11p_sd15_openpose): OpenPose 1.1, body only or body + hands + face ("Full")."""
from apps.v11.common import NO_PREPROCESSOR, Preprocessor, v11_app

APP = v11_app("v11_openpose", "OpenPose", "cn11_openpose", preprocessors=(
    Preprocessor("Openpose_Full", "openpose11", {"hand": True, "face": True}),
    Preprocessor("Openpose", "openpose11"),
    NO_PREPROCESSOR,
))
