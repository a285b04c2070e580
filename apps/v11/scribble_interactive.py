"""Scribbles drawn in the page (control_v11p_sd15_scribble): the strokes are the map, shown as fed (white on black)."""
from annotator.registry import Param
from apps.v11.common import v11_app

APP = v11_app("v11_scribble_interactive", "Interactive Scribbles", "cn11_scribble",
              preprocessors=(), condition=None, annotator="scribble",
              canvas=(Param("canvas_width", "Canvas Width", 512, 256, 1024, 1),
                      Param("canvas_height", "Canvas Height", 512, 256, 1024, 1)))
