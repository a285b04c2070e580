"""Content shuffle (control_v11e_sd15_shuffle): recompose the input's content. The model's residuals are
pooled to one value per channel (set with its weights) and it controls the conditional branch only; the
unconditional branch is plain SD."""
from __future__ import annotations

import random
from typing import Any

import numpy as np

from annotator.shuffle import ContentShuffleDetector
from annotator.util import AnnotatorInputError, resize_image
from apps.backend import Backend
from apps.errors import InvalidInput
from apps.images import input_image
from apps.spec import AppSpec, Conditioning, Request
from apps.v11.common import NO_PREPROCESSOR, Preprocessor, output_size, v11_app
from cldm import limits
from cldm.control import ControlMode


def shuffled(spec: AppSpec, backend: Backend, image: Any, request: Request) -> Conditioning:
    """"Shuffle": the full-size input warped straight into the output size by a smooth random flow drawn from
    the run's seed (seed −1 is drawn here, before the map, and the same seed drives sampling). "None": the
    input resized as the images are is the control, and the gallery holds the samples only."""
    image = input_image(image)
    resolution, seed = request.values["image_resolution"], request.values["seed"]
    if seed == -1:
        seed = random.randint(0, limits.RANDOM_SEED_RANGE)
    if request.preprocessor.detector is None:
        try:
            control = np.ascontiguousarray(resize_image(image, resolution))
        except AnnotatorInputError as err:
            raise InvalidInput(f"Input image: {err}") from None
        return Conditioning(control, None, mode=ControlMode.CONDITIONAL, seed=seed)
    shuffled_map = ContentShuffleDetector()(image, seed=seed, size=output_size(image, resolution))
    return Conditioning(shuffled_map, shuffled_map, mode=ControlMode.CONDITIONAL, seed=seed)


APP = v11_app("v11_shuffle", "Content Shuffle", "cn11_shuffle",
              preprocessors=(NO_PREPROCESSOR, Preprocessor("Shuffle", "shuffle")), condition=shuffled,
              guess_mode=False, detect_resolution=False,
              notes="*Shuffle* scrambles the input's content with a random flow that follows the Seed; with *None* "
                    "upload an already shuffled image (or any image to borrow its style). Not on the multi page: "
                    "the model controls the prompt branch only.")
