"""Depth (control_v11f1p_sd15_depth): ZoeDepth or MiDaS, near = bright."""
from apps.v11.common import NO_PREPROCESSOR, Preprocessor, v11_app

APP = v11_app("v11_depth", "Depth Maps", "cn11_depth",
              preprocessors=(Preprocessor("Depth_Zoe", "zoe"), Preprocessor("Depth_Midas", "depth"), NO_PREPROCESSOR))
