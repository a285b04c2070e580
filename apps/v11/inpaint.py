"""Inpaint (control_v11p_sd15_inpaint): repaint the area painted on the image (or given as a mask image). The
control is the image with the painted area at −1; sampling keeps the rest of the latent on the noised input
and the result is pasted into the input with the blurred mask, so unpainted pixels stay as they were."""
from __future__ import annotations

from typing import Any

import numpy as np

from annotator.processing import inpaint_mask
from annotator.registry import Param
from annotator.util import AnnotatorInputError, resize_image
from apps.backend import Backend
from apps.errors import InvalidInput
from apps.images import MaskedUpload, masked_input
from apps.spec import AppSpec, Conditioning, Request
from apps.v11.common import v11_app
from cldm.pipeline import Inpaint

MASK_BLUR = Param("mask_blur", "Mask Blur", 5.0, 0.1, 7.0, 0.01)


def inpainted(spec: AppSpec, backend: Backend, value: Any, request: Request) -> Conditioning:
    """The image resized as the images are, its mask resized and blurred (Mask Blur); the gallery first shows
    the hint as the network sees it (the area to repaint black)."""
    image, mask = masked_input(value if isinstance(value, MaskedUpload) else MaskedUpload(value))
    try:
        resized = np.ascontiguousarray(resize_image(image, request.values["image_resolution"]))
    except AnnotatorInputError as err:
        raise InvalidInput(f"Input image: {err}") from None
    soft = inpaint_mask(mask, resized.shape[:2], request.values["mask_blur"])
    shown = resized.copy()
    shown[soft > 0.5] = 0
    return Conditioning(resized, shown, shown_kind="hint", init=Inpaint(resized, soft))


APP = v11_app("v11_inpaint", "Inpaint Mask", "cn11_inpaint", preprocessors=(), condition=inpainted,
              primary=(MASK_BLUR,), paint_mask=True,
              notes="Paint over what should change; the prompt says what to put there. Not on the multi page: "
                    "it needs the image and its mask.")
