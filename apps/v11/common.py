"""What every ControlNet 1.1 app shares: its controls and defaults, and how its map is made.

The 1.1 rule for a map: the chosen detector runs on the input resized to the Preprocessor Resolution (the
"None" choice takes the full-size upload itself), the map is resized bilinearly to the output size H×W
(= `resize_image(input, image_resolution)`), then the app's `finish` step runs (scribble: thin, blur,
threshold). The page shows that map as it is fed; lineart apps feed it inverted (white lines on black).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from annotator.registry import REGISTRY, Param
from annotator.util import HWC3, AnnotatorInputError, resize_image
from apps.backend import Backend
from apps.controls import ETA, GUESS_MODE, IMAGE_RESOLUTION, NUM_SAMPLES, SCALE, SEED, STEPS, STRENGTH
from apps.errors import InvalidInput
from apps.images import input_image
from apps.spec import NO_PREPROCESSOR, AppSpec, Conditioning, Preprocessor, Request, detect_resolution

A_PROMPT = "best quality"
N_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"
DETECT_RESOLUTION = detect_resolution("Preprocessor Resolution")
V11_SEED = replace(SEED, default=12345)
V11_ETA = replace(ETA, default=1.0)

__all__ = ["A_PROMPT", "N_PROMPT", "NO_PREPROCESSOR", "Preprocessor", "output_size", "preprocessed",
           "preprocessed_maps", "v11_app"]


def output_size(image: np.ndarray, image_resolution: int) -> tuple[int, int]:
    """(H, W) of the generated images: the shape of resize_image(image, image_resolution)."""
    try:
        return resize_image(image, image_resolution).shape[:2]
    except AnnotatorInputError as err:
        raise InvalidInput(f"Input image: {err}") from None


def detector_kwargs(preprocessor: Preprocessor, values: Mapping[str, Any]) -> dict[str, Any]:
    """The choice's fixed arguments and those of the app's controls that its detector takes."""
    accepted = {p.name for p in REGISTRY[preprocessor.detector].params}
    return {**preprocessor.kwargs, **{k: v for k, v in values.items() if k in accepted}}


def preprocessed_maps(spec: AppSpec, backend: Backend, image: np.ndarray, preprocessor: Preprocessor,
                      image_resolution: int, detect_resolution: int | None,
                      detector_values: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(map fed to the network, map shown) of `image` (H×W×3 uint8) under the 1.1 rule, at the output size."""
    height, width = output_size(image, image_resolution)
    if preprocessor.detector is None:
        detected = image
    else:
        try:
            source = resize_image(image, detect_resolution)
        except AnnotatorInputError as err:
            raise InvalidInput(f"Input image: {err}") from None
        detector = backend.detector(preprocessor.detector)
        detected = HWC3(detector(source, **detector_kwargs(preprocessor, detector_values)))
    resized = spec.finish(cv2.resize(detected, (width, height), interpolation=cv2.INTER_LINEAR))
    return np.ascontiguousarray(spec.to_control(resized)), spec.display(resized)


def preprocessed(spec: AppSpec, backend: Backend, image: Any, request: Request) -> Conditioning:
    """The standard 1.1 condition: the chosen Preprocessor's map (`preprocessed_maps`), shown before the samples."""
    values = request.values
    control, shown = preprocessed_maps(spec, backend, input_image(image), request.preprocessor,
                                       values["image_resolution"], values.get("detect_resolution"),
                                       request.detector_values)
    return Conditioning(control, shown)


def v11_app(name: str, title: str, weights: str, *, preprocessors: tuple[Preprocessor, ...] = (NO_PREPROCESSOR,),
            params: tuple[Param, ...] = (), guess_mode: bool = True, steps: int = STEPS.default,
            max_resolution: int = IMAGE_RESOLUTION.maximum, detect_resolution: bool | None = None,
            condition: Callable[..., Conditioning] | None = preprocessed, annotator: str = "",
            **fields: Any) -> AppSpec:
    """A 1.1 app from its own parts (`weights`: the official file's key; the fp16 copy is the default): the 1.1
    controls around `params` (Images, Image Resolution up to
    `max_resolution`, Control Strength, Guess Mode when the model allows it, Preprocessor Resolution when a
    choice runs a detector (or as `detect_resolution` says), Steps (default `steps`), Guidance Scale, Seed
    12345, eta 1.0), the 1.1 prompts, and the standard condition unless the app brings its own (None: the 1.0
    rule with `annotator`, as the interactive scribble app, whose drawing is the map)."""
    if detect_resolution is None:
        detect_resolution = any(p.detector is not None for p in preprocessors)
    resolution = replace(IMAGE_RESOLUTION, maximum=max_resolution)
    fields = {"a_prompt": A_PROMPT, "n_prompt": N_PROMPT, **fields}
    return AppSpec(
        name=name, title=title, annotator=annotator, weights=(f"{weights}_fp16", weights), params=params,
        detect_resolution=DETECT_RESOLUTION if detect_resolution else None,
        preprocessors=preprocessors, condition=condition,
        before=(NUM_SAMPLES, resolution, STRENGTH) + ((GUESS_MODE,) if guess_mode else ()),
        after=(replace(STEPS, default=steps), SCALE, V11_SEED, V11_ETA),
        **fields,
    )
