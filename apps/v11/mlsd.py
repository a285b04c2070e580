"""M-LSD straight lines (control_v11p_sd15_mlsd); the page shows the map as fed (white lines on black)."""
from apps.spec import detector_params
from apps.v11.common import NO_PREPROCESSOR, Preprocessor, v11_app

APP = v11_app("v11_mlsd", "MLSD Lines", "cn11_mlsd",
              preprocessors=(Preprocessor("MLSD", "mlsd"), NO_PREPROCESSOR), params=detector_params("mlsd"))
