"""Synthesized scribbles (control_v11p_sd15_scribble): soft edges (HED or PiDiNet) thinned, blurred and
thresholded at the output size. With "None" the upload goes through the same steps, so it must be white
strokes on black."""
from annotator.hed import fake_scribble
from apps.v11.common import NO_PREPROCESSOR, Preprocessor, v11_app

APP = v11_app("v11_scribble", "Synthesized Scribble", "cn11_scribble",
              preprocessors=(Preprocessor("Scribble_HED", "softedge_hed"), Preprocessor("Scribble_PIDI", "softedge_pidi"),
                             NO_PREPROCESSOR),
              finish=fake_scribble,
              notes="With Preprocessor *None* the upload is thinned and thresholded too: use white strokes on black.")
