"""Line drawings (control_v11p_sd15_lineart): the detector draws dark lines on white, as the page shows them;
the network gets them inverted (white lines on black). With "None" upload dark lines on white too."""
from apps.spec import invert
from apps.v11.common import NO_PREPROCESSOR, Preprocessor, v11_app

APP = v11_app("v11_lineart", "Lineart", "cn11_lineart",
              preprocessors=(Preprocessor("Lineart", "lineart"), Preprocessor("Lineart_Coarse", "lineart_coarse"),
                             NO_PREPROCESSOR),
              to_control=invert,
              notes="With *None*, upload dark lines on a white background.")
