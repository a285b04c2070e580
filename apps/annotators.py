"""The annotator-only page (the original's gradio_annotator.py): every detector with its parameters, maps
shown as made (not inverted) at the resized input's size."""
from apps.spec import AnnotatorSection, detector_params, resolution

SECTIONS = (
    AnnotatorSection("canny", "Canny Edge", ("canny",), detector_params("canny") + (resolution(),)),
    AnnotatorSection("hed", "HED Edge", ("hed",), (resolution(),)),
    AnnotatorSection("mlsd", "MLSD Edge", ("mlsd",), detector_params("mlsd") + (resolution(384),)),
    # The page's alpha slider feeds the normal map's z constant; its background threshold stays at 0.1.
    AnnotatorSection("midas", "MIDAS Depth and Normal", ("depth", "normal"),
                     detector_params("normal", "alpha", alpha={"label": "alpha", "default": 6.2}) + (resolution(384),),
                     fixed={"bg_threshold": 0.1}),
    AnnotatorSection("openpose", "Openpose", ("openpose",),
                     detector_params("openpose", hand={"label": "detect hand"}) + (resolution(),)),
    AnnotatorSection("seg", "Uniformer Segmentation", ("seg",), (resolution(),)),
    AnnotatorSection("scribble", "Scribble (dark strokes on light paper)", ("scribble",), (resolution(),)),
    AnnotatorSection("fake_scribble", "Fake Scribble (HED)", ("fake_scribble",), (resolution(),)),
    # ControlNet 1.1 detectors.
    AnnotatorSection("lineart", "Lineart (fine and coarse)", ("lineart", "lineart_coarse"), (resolution(),)),
    AnnotatorSection("lineart_anime", "Anime Lineart", ("lineart_anime",), (resolution(),)),
    AnnotatorSection("softedge", "Soft Edge (HED 1.1 and PiDiNet)", ("softedge_hed", "softedge_pidi"),
                     detector_params("softedge_hed") + (resolution(),)),
    AnnotatorSection("scribble_pidi", "Scribble (PiDiNet)", ("scribble_pidi",), (resolution(),)),
    AnnotatorSection("normalbae", "Normal BAE", ("normalbae",), (resolution(),)),
    AnnotatorSection("zoe", "ZoeDepth", ("zoe",), (resolution(),)),
    AnnotatorSection("openpose11", "Openpose 1.1 (body, hands, face)", ("openpose11",),
                     detector_params("openpose11") + (resolution(),)),
    AnnotatorSection("shuffle", "Content and Color Shuffle", ("shuffle", "color_shuffle"),
                     detector_params("shuffle") + (resolution(),)),
)
