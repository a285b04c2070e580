"""Surface normals (control_v11p_sd15_normalbae): Normal BAE, channels fed as predicted (x, y, z)."""
from apps.v11.common import NO_PREPROCESSOR, Preprocessor, v11_app

APP = v11_app("v11_normalbae", "Normal BAE Maps", "cn11_normalbae",
              preprocessors=(Preprocessor("Normal_BAE", "normalbae"), NO_PREPROCESSOR),
              notes="With *None*, upload a normal map in the ScanNet/NYU colours (blue = facing the camera, "
                    "red = left, green = up).")
