"""Semantic segmentation (control_v11p_sd15_seg): UniFormer ADE20K colours, or a segmentation map uploaded as is."""
from apps.v11.common import NO_PREPROCESSOR, Preprocessor, v11_app

APP = v11_app("v11_seg", "Semantic Segmentation", "cn11_seg",
              preprocessors=(Preprocessor("Seg_UFADE20K", "seg"), NO_PREPROCESSOR),
              notes="The original 1.1 app also offers OneFormer (ADE20K and COCO); OneFormer is not implemented "
                    "here, so the choices are UniFormer (ADE20K) and *None* (upload a map in ADE20K or COCO colours).")
