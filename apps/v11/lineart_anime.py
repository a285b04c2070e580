"""Anime line drawings (control_v11p_sd15s2_lineart_anime): dark lines on white, fed inverted; prompts encoded
as 3 × 77 tokens with CLIP skip 2, as the model was trained; no guess mode."""
from apps.spec import invert
from apps.v11.common import NO_PREPROCESSOR, Preprocessor, v11_app
from cldm.limits import LARGE_IMAGE_RESOLUTION

APP = v11_app(
    "v11_lineart_anime", "Anime Lineart", "cn11_lineart_anime",
    preprocessors=(NO_PREPROCESSOR, Preprocessor("Lineart_Anime", "lineart_anime")),
    to_control=invert, guess_mode=False, max_resolution=LARGE_IMAGE_RESOLUTION.maximum,
    a_prompt="masterpiece, best quality, ultra-detailed, illustration, disheveled hair",
    n_prompt="longbody, lowres, bad anatomy, bad hands, missing fingers, pubic hair,extra digit, fewer digits, "
             "cropped, worst quality, low quality",
    generation={"prompt_chunks": 3, "clip_skip": 2},
    notes="**Plain SD 1.5 is the wrong base for this model**: it was trained on an anime SD 1.5 checkpoint (such "
          "as Anything v3) and gives poor images on SD 1.5. Start the server with `--base FILE` (any SD 1.5 "
          "single-file checkpoint, `.safetensors` or `.ckpt`, e.g. Anything v3) to use one. Prompts up to 225 "
          "tokens work on this page (3 × 75, CLIP skip 2); long, tag-style prompts are recommended. With *None* "
          "upload dark lines on white.",
)
