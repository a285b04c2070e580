"""Tile (control_v11f1e_sd15_tile): image to image with the input itself as the control; the model ignores
the details and regenerates them (a small input is simply up-sampled: that is the resampling)."""
from __future__ import annotations

from typing import Any

from annotator.processing import tile_control
from annotator.registry import Param
from annotator.util import AnnotatorInputError, resize_image
from apps.backend import Backend
from apps.errors import InvalidInput
from apps.images import input_image
from apps.spec import AppSpec, Conditioning, Request
from apps.v11.common import v11_app
from cldm.limits import LARGE_IMAGE_RESOLUTION
from cldm.pipeline import Img2Img

DENOISE = Param("denoise", "Denoising Strength", 1.0, 0.1, 1.0, 0.01)


def tiled(spec: AppSpec, backend: Backend, image: Any, request: Request) -> Conditioning:
    """The control is the input bilinearly resized to the output size; sampling starts from the input resized
    as the images are, noised to the Denoising Strength. The gallery shows the input first."""
    image = input_image(image)
    try:
        resized = resize_image(image, request.values["image_resolution"])
    except AnnotatorInputError as err:
        raise InvalidInput(f"Input image: {err}") from None
    return Conditioning(tile_control(image, resized.shape[:2]), image, shown_kind="input",
                        init=Img2Img(resized, request.values["denoise"]))


APP = v11_app("v11_tile", "Tile", "cn11_tile", condition=tiled, primary=(DENOISE,), steps=32,
              max_resolution=LARGE_IMAGE_RESOLUTION.maximum,
              n_prompt="blur, lowres, bad anatomy, bad hands, cropped, worst quality",
              notes="Image to image: the input is both the start and the control. Denoising Strength 1 regenerates "
                    "everything (the input still shows through), lower keeps more of it. Samplers without an "
                    "image-to-image start (LCM) are refused. Not on the multi page: it needs a start image.")
