"""Canny edges (control_v11p_sd15_canny): OpenCV Canny on the input at the Preprocessor Resolution."""
from apps.spec import detector_params
from apps.v11.common import NO_PREPROCESSOR, Preprocessor, v11_app

APP = v11_app("v11_canny", "Canny Edges", "cn11_canny",
              preprocessors=(Preprocessor("Canny", "canny"), NO_PREPROCESSOR), params=detector_params("canny"))
