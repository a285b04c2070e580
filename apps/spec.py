"""What an app is, without any UI: its declaration (`AppSpec`), server-side validation of every value of a
request, and the one function that turns an input image into (display map, samples, seed). The Gradio pages
(`apps/builder.py`) and the headless CLI (`launch.py generate`) both run apps through `run_app`; the
multi-condition page (`apps/multi_request.py`) makes its maps with `control_map` and its generation settings
with `generation_params`, as the single apps do.

A ControlNet 1.1 app (`apps/v11/`) also declares its Preprocessor choices and a `condition`: how its input
becomes the map fed to the network and what the gallery shows first (and, for the special apps, the control
mode and the image-to-image or inpainting start).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from annotator.registry import REGISTRY, Param
from annotator.util import AnnotatorInputError, resize_image
from apps.backend import Backend
from apps.controls import (A_PROMPT, AFTER_EXTRAS, BEFORE_EXTRAS, N_PROMPT, Choices, check_param, check_text,
                           with_fast_ranges)
from apps.errors import InvalidInput
from apps.images import input_image
from cldm.checkpoint import CheckpointError
from cldm.control import ControlMode
from cldm.pipeline import GenerationParams, generate
from cldm.preview import preview_images
from weights.files import WeightsUnavailable
from weights.table import WEIGHTS

log = logging.getLogger(__name__)


PREVIEWS = 8  # at most this many previews per run (each costs a TAESD decode)


def detect_resolution(label: str, default: int = 512) -> Param:
    """The per-app annotator-resolution slider (128–1024, step 1, as the original apps)."""
    return Param("detect_resolution", label, default, 128, 1024, 1)


def detector_params(annotator: str, *names: str, **changes: Mapping[str, Any]) -> tuple[Param, ...]:
    """The registry's parameters of `annotator` (all, or only `names`), with field changes per parameter,
    e.g. ``detector_params("normal", "bg_threshold")`` or ``detector_params("normal", alpha={"default": 6.2})``."""
    params = REGISTRY[annotator].params
    chosen = [p for p in params if not names or p.name in names]
    unknown = (set(names) | set(changes)) - {p.name for p in params}
    if unknown:
        raise KeyError(f"{annotator} has no parameter(s) {sorted(unknown)}")
    return tuple(replace(p, **changes.get(p.name, {})) for p in chosen)


@dataclass(frozen=True)
class Preprocessor:
    """One choice of a 1.1 app's Preprocessor radio: a registry detector with fixed keyword arguments (e.g.
    "SoftEdge_PIDI_safe" = softedge_pidi with safe=True), or no detector: the upload already is the map."""

    label: str
    detector: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)


NO_PREPROCESSOR = Preprocessor("None")


@dataclass(frozen=True)
class Conditioning:
    """What one run feeds the pipeline and shows before its samples."""

    control: np.ndarray  # H×W×3 uint8, the map the ControlNet gets
    shown: np.ndarray | None  # the first gallery item (None: the gallery holds the samples only)
    shown_kind: str = "map"  # what `shown` is: "map", "input" (tile) or "hint" (inpaint)
    mode: ControlMode | None = None  # None: the pipeline's own choice (guess mode or not)
    init: Any = None  # a cldm.pipeline.Img2Img / Inpaint start, or None: sampling from pure noise
    seed: int | None = None  # the seed the map was made with (a random seed drawn before detection)


def identity(detected_map: np.ndarray) -> np.ndarray:
    return detected_map


def invert(detected_map: np.ndarray) -> np.ndarray:
    return 255 - detected_map


@dataclass(frozen=True)
class AppSpec:
    """Everything one app declares; the rest is common.

    `params`: the detector parameters the app shows (from the registry); `detect_resolution`: the
    annotator-resolution slider, or None when the detector runs on the image-resolution image;
    `weights`: `weights.WEIGHTS` keys of the ControlNet weights offered, default first;
    `display`: the first gallery item made from the map; `to_control`: the map fed to the network.

    The fields after `canvas` are those of the 1.1 apps (their defaults keep the 1.0 apps as they are):
    `preprocessors`: the Preprocessor radio, default first (a radio is shown when there are two or more);
    `condition(spec, backend, image, request)`: the input's way to a `Conditioning` (None: the 1.0 rule,
    `control_map`); `finish`: applied to the map at the output size, before `display`/`to_control`;
    `before`/`after`: the common controls around the app's own; `primary`: app controls shown next to Run;
    `a_prompt`/`n_prompt`: the prompt fields' defaults; `generation`: extra `GenerationParams` fields;
    `paint_mask`: the input is an image with a mask painted on it; `notes`: Markdown shown under the title.
    """

    name: str
    title: str
    annotator: str
    weights: tuple[str, ...]
    params: tuple[Param, ...] = ()
    detect_resolution: Param | None = None
    display: Callable[[np.ndarray], np.ndarray] = identity
    to_control: Callable[[np.ndarray], np.ndarray] = identity
    canvas: tuple[Param, Param] | None = None  # (width, height): the input is a drawing canvas, not an upload
    preprocessors: tuple[Preprocessor, ...] = ()
    condition: Callable[..., Conditioning] | None = None
    finish: Callable[[np.ndarray], np.ndarray] = identity
    before: tuple[Param, ...] = BEFORE_EXTRAS
    after: tuple[Param, ...] = AFTER_EXTRAS
    primary: tuple[Param, ...] = ()
    a_prompt: str = A_PROMPT
    n_prompt: str = N_PROMPT
    generation: Mapping[str, Any] = field(default_factory=dict)
    paint_mask: bool = False
    prompt_placeholder: str = ""
    notes: str = ""

    @property
    def extras(self) -> tuple[Param, ...]:
        return ((self.detect_resolution,) if self.detect_resolution else ()) + self.params

    @property
    def accordion(self) -> tuple[Param, ...]:
        """The controls in the "Advanced options" accordion, in order."""
        return self.before + self.extras + self.after

    @property
    def controls(self) -> tuple[Param, ...]:
        """Every numeric/boolean control: those next to Run, then the accordion's, in order."""
        return self.primary + self.accordion

    @property
    def preprocessor_radio(self) -> bool:
        """Whether the page shows a Preprocessor radio (two or more choices)."""
        return len(self.preprocessors) > 1

    def preprocessor(self, label: Any) -> Preprocessor | None:
        """The Preprocessor choice called `label` (None or "": the default); None for an app without a choice."""
        if not self.preprocessors:
            if label not in (None, ""):
                raise InvalidInput(f"Preprocessor: this app has no preprocessor choice, got {label!r}")
            return None
        if label is None or label == "":
            return self.preprocessors[0]
        for choice in self.preprocessors:
            if choice.label == label:
                return choice
        raise InvalidInput(f"Preprocessor: {label!r} is not one of {', '.join(p.label for p in self.preprocessors)}")

    def weight_choices(self) -> list[tuple[str, str]]:
        return [(WEIGHTS[key].label, key) for key in self.weights]


@dataclass(frozen=True)
class AnnotatorSection:
    """One block of the annotator page: detectors run on one upload with shared controls.

    `controls` end with the `resolution` Param; values go to the detectors that accept them by name;
    `fixed` are values passed without a control (e.g. the normal map's background threshold)."""

    name: str
    title: str
    detectors: tuple[str, ...]
    controls: tuple[Param, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)


def resolution(default: int = 512) -> Param:
    """The annotator page's resolution slider (256–1024, step 64, as the original page)."""
    return Param("resolution", "resolution", default, 256, 1024, 64)


@dataclass(frozen=True)
class Request:
    """A validated request: every value typed and in range."""

    values: dict[str, Any]  # every control by name
    detector_values: dict[str, Any]  # the detector's keyword arguments among them
    prompt: str
    a_prompt: str
    n_prompt: str
    weights: str
    choices: Choices
    preprocessor: Preprocessor | None = None  # the 1.1 apps' Preprocessor choice


def validate(spec: AppSpec, values: Mapping[str, Any], prompt: Any, a_prompt: Any, n_prompt: Any,
             weights: Any, choices: Choices = Choices(), preprocessor: Any = None) -> Request:
    """Check every value of one request of app `spec` (the server never trusts slider limits); `choices`
    (checked with `apps.controls.check_choices`) sets the ranges of Steps and Guidance Scale under Fast;
    `preprocessor`: the label of a 1.1 app's Preprocessor choice (None: its default)."""
    chosen = spec.preprocessor(preprocessor)
    checked = {p.name: check_param(p, values.get(p.name)) for p in with_fast_ranges(spec.controls, choices.fast)}
    if weights is None or weights == "":
        weights = spec.weights[0]
    if weights not in spec.weights:
        raise InvalidInput(f"ControlNet weights: {weights!r} is not offered by this app; choose one of {', '.join(spec.weights)}")
    return Request(
        values=checked,
        detector_values={p.name: checked[p.name] for p in spec.params},
        prompt=check_text("Prompt", prompt),
        a_prompt=check_text("Added Prompt", a_prompt),
        n_prompt=check_text("Negative Prompt", n_prompt),
        weights=weights,
        choices=choices,
        preprocessor=chosen,
    )


def generation_params(values: Mapping[str, Any], prompt: str, a_prompt: str, n_prompt: str,
                      sampler: str) -> GenerationParams:
    """The generation settings of a checked request (the common controls by name)."""
    return GenerationParams(
        prompt=prompt, a_prompt=a_prompt, n_prompt=n_prompt,
        num_samples=values["num_samples"], image_resolution=values["image_resolution"], steps=values["ddim_steps"],
        guess_mode=values.get("guess_mode", False), strength=values.get("strength", 1.0),
        scale=values["scale"], seed=values["seed"], eta=values["eta"], sampler=sampler,
    )


def control_map(spec: AppSpec, backend: Backend, image: np.ndarray, image_resolution: int,
                detect_resolution: int | None, detector_values: Mapping[str, Any]) -> np.ndarray:
    """The detected map at H×W = resize_image(image, image_resolution) (the output size): the detector runs on
    resize_image(image, detect_resolution), or on the H×W image when the app has no detect resolution."""
    try:
        target = resize_image(image, image_resolution)
        source = target if spec.detect_resolution is None else resize_image(image, detect_resolution)
        detector = backend.detector(spec.annotator)
        return detector.control_map(source, target.shape[:2], **detector_values)
    except AnnotatorInputError as err:
        raise InvalidInput(f"Input image: {err}") from None


@dataclass(frozen=True)
class AppResult:
    display_map: np.ndarray | None  # the first gallery item (None: none, e.g. shuffle without a preprocessor)
    samples: list[np.ndarray]
    seed: int
    sampler: str
    steps: int
    fast: bool
    display_kind: str = "map"  # what display_map is: "map", "input" or "hint"
    mode: str = "balanced"  # the control mode used (cldm.control.ControlMode's value)


def step_callback(backend: Backend, on_step: Callable[[int, int], bool | None] | None,
                  on_preview: Callable[[list[np.ndarray], int, int], None] | None):
    """The sampler's per-step callback: `on_step(done, total)` (False cancels), and `on_preview(images, done,
    total)` with the predicted images decoded by TAESD, after every step of a short run and at most 8 times in all.
    Previews are optional: without the TAESD file (offline, say) the run goes on without them."""
    if on_step is None and on_preview is None:
        return None
    previews = {"on": on_preview is not None}

    def callback(i: int, total: int, x, x0) -> bool | None:
        done = i + 1
        if previews["on"] and done < total and done % -(-total // PREVIEWS) == 0:
            try:
                taesd = backend.model.taesd()
            except (WeightsUnavailable, CheckpointError) as err:
                log.warning("no previews: %s", err)
                previews["on"] = False
            else:
                on_preview(preview_images(taesd, x0), done, total)
        return None if on_step is None else on_step(done, total)

    return callback


def run_app(spec: AppSpec, backend: Backend, image: Any, request: Request,
            on_step: Callable[[int, int], bool | None] | None = None,
            on_status: Callable[[str], None] | None = None,
            on_preview: Callable[[list[np.ndarray], int, int], None] | None = None) -> AppResult:
    """Detect, then generate: the one path shared by the pages and the CLI.

    `on_step(done, total)` is called after every sampling step; returning False cancels
    (`cldm.ddim.SamplingCancelled` is raised). `on_status(text)` reports the phase; `on_preview` receives
    TAESD previews during sampling (see `step_callback`).
    """
    status = on_status or (lambda text: None)
    values = request.values
    if spec.condition is None:
        image = input_image(image, canvas=spec.canvas is not None)
        status("Detecting the control map")
        detected = control_map(spec, backend, image, values["image_resolution"], values.get("detect_resolution"),
                               request.detector_values)
        conditioning = Conditioning(np.ascontiguousarray(spec.to_control(detected)), spec.display(detected))
    else:
        status("Detecting the control map")
        conditioning = spec.condition(spec, backend, image, request)
    status("Loading the model")
    params = generation_params(values, request.prompt, request.a_prompt, request.n_prompt, request.choices.sampler)
    if conditioning.seed is not None or spec.generation:
        seed = params.seed if conditioning.seed is None else conditioning.seed
        params = replace(params, seed=seed, **spec.generation)
    callback = step_callback(backend, on_step, on_preview)
    with backend.model.activate(request.weights, request.choices.all_loras()) as model:
        status("Sampling")
        decoder = backend.model.taesd() if request.choices.fast_decode else None
        result = generate(model, conditioning.control, params, callback, decoder, mode=conditioning.mode,
                          init=conditioning.init)
    mode = conditioning.mode or (ControlMode.GUESS if params.guess_mode else ControlMode.BALANCED)
    return AppResult(display_map=conditioning.shown, samples=result.images, seed=result.seed,
                     sampler=params.sampler, steps=params.steps, fast=request.choices.fast,
                     display_kind=conditioning.shown_kind, mode=ControlMode(mode).value)
