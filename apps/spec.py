"""What an app is, without any UI: its declaration (`AppSpec`), the common generation controls,
server-side validation of every value, and the one function that turns an input image into
(display map, samples, seed). The Gradio pages (`apps/builder.py`) and the headless CLI
(`launch.py generate`) both run apps through `run_app`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps

from annotator.registry import REGISTRY, Param
from annotator.scribble import scribble_from_canvas
from annotator.util import MAX_SIDE, AnnotatorInputError, check_image, resize_image
from cldm.hub import WEIGHTS
from cldm.pipeline import DEFAULT_A_PROMPT, DEFAULT_N_PROMPT, MAX_SEED, GenerationParams, generate

MAX_PROMPT_CHARS = 1000
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
REFUSED_MODES = ("I", "F")  # 32-bit integer and float pixels (16-bit PNGs open as I;16…)

# The common controls of section a.0, in the order of the "Advanced options" accordion
# (the app's own controls go between GUESS_MODE and STEPS).
NUM_SAMPLES = Param("num_samples", "Images", 1, 1, 12, 1)
IMAGE_RESOLUTION = Param("image_resolution", "Image Resolution", 512, 256, 768, 64)
STRENGTH = Param("strength", "Control Strength", 1.0, 0.0, 2.0, 0.01)
GUESS_MODE = Param("guess_mode", "Guess Mode", False)
STEPS = Param("ddim_steps", "Steps", 20, 1, 100, 1)
SCALE = Param("scale", "Guidance Scale", 9.0, 0.1, 30.0, 0.1)
SEED = Param("seed", "Seed", -1, -1, MAX_SEED, 1)
# The original's eta is an unbounded number box; above 1 the DDIM variance exceeds 1 - ᾱ_prev (NaNs).
ETA = Param("eta", "eta (DDIM)", 0.0, 0.0, 1.0, None)
A_PROMPT = DEFAULT_A_PROMPT
N_PROMPT = DEFAULT_N_PROMPT
BEFORE_EXTRAS = (NUM_SAMPLES, IMAGE_RESOLUTION, STRENGTH, GUESS_MODE)
AFTER_EXTRAS = (STEPS, SCALE, SEED, ETA)


class InvalidInput(ValueError):
    """A value a user (or an API caller) sent that cannot be used; the message says which and why."""


def detect_resolution(label: str, default: int = 512) -> Param:
    """The per-app annotator-resolution slider (section a.1: 128–1024, step 1)."""
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


def identity(detected_map: np.ndarray) -> np.ndarray:
    return detected_map


def invert(detected_map: np.ndarray) -> np.ndarray:
    return 255 - detected_map


@dataclass(frozen=True)
class AppSpec:
    """Everything one app declares; the rest is common.

    `params`: the detector parameters the app shows (from the registry); `detect_resolution`: the
    annotator-resolution slider, or None when the detector runs on the image-resolution image;
    `weights`: `cldm.hub` keys of the ControlNet weights offered, default first;
    `display`: the first gallery item made from the map; `to_control`: the map fed to the network.
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

    @property
    def extras(self) -> tuple[Param, ...]:
        return ((self.detect_resolution,) if self.detect_resolution else ()) + self.params

    @property
    def controls(self) -> tuple[Param, ...]:
        """Every numeric/boolean control, in the accordion's order."""
        return BEFORE_EXTRAS + self.extras + AFTER_EXTRAS

    def weight_choices(self) -> list[tuple[str, str]]:
        return [(WEIGHTS[key].role, key) for key in self.weights]


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
    """The annotator page's resolution slider (section a.2: 256–1024, step 64)."""
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


def check_param(param: Param, value: Any) -> Any:
    """`value` typed and range-checked for `param`; InvalidInput names the control and the range."""
    if value is None:
        raise InvalidInput(f"{param.label}: a value is required")
    if isinstance(value, str):  # API callers may send "20"
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidInput(f"{param.label}: expected a number, got {value!r}") from None
    try:
        value = param.coerce(value)
    except AnnotatorInputError as err:
        raise InvalidInput(str(err)) from None
    if param.kind is int and param.step not in (None, 1) and param.minimum is not None:
        if (value - param.minimum) % param.step:
            raise InvalidInput(f"{param.label}: {value} is not one of {param.minimum}, {param.minimum + param.step}, … (step {param.step})")
    return value


def check_text(label: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{label}: expected text, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"{label}: {len(value)} characters is too long (at most {MAX_PROMPT_CHARS})")
    return value


def validate(spec: AppSpec, values: Mapping[str, Any], prompt: Any, a_prompt: Any, n_prompt: Any,
             weights: Any) -> Request:
    """Check every value of one request of app `spec` (the server never trusts slider limits)."""
    checked = {p.name: check_param(p, values.get(p.name)) for p in spec.controls}
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
    )


def read_image(path: str | Path, name: str | None = None) -> np.ndarray:
    """An image file as H×W×3 (or ×4 with alpha) uint8, EXIF rotation applied; InvalidInput when it is not a
    readable 8-bit image or is larger than MAX_SIDE per side (checked from the header, before decoding)."""
    name = name or Path(path).name
    try:
        with PIL.Image.open(path) as im:
            width, height = im.size
            if max(width, height) > MAX_SIDE:
                raise InvalidInput(f"{name} is {width}×{height} px; at most {MAX_SIDE} px per side is accepted. Resize it first.")
            if im.mode.startswith(REFUSED_MODES):
                raise InvalidInput(f"{name} has {im.mode} pixels (16/32-bit or floating point); only 8-bit images are "
                                   "accepted. Save it as an 8-bit PNG or JPEG.")
            im = PIL.ImageOps.exif_transpose(im)
            alpha = im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)
            return np.array(im.convert("RGBA" if alpha else "RGB"))
    except InvalidInput:
        raise
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise InvalidInput(f"Could not read {name} as an image: the file is corrupt, truncated or not an image "
                           f"({type(err).__name__}). Use a PNG, JPEG or WebP file.") from None


def input_image(spec: AppSpec, image: Any) -> np.ndarray:
    """The app's input as H×W×3 uint8: an upload, or the stroke map drawn on the canvas."""
    if image is None:
        raise InvalidInput("No input image: upload an image first." if not spec.canvas
                           else "No drawing: open the canvas and draw something first.")
    try:
        if spec.canvas:
            # The canvas gives white strokes on black; the scribble detector wants dark strokes on paper.
            return 255 - scribble_from_canvas(image)
        return check_image(image)
    except AnnotatorInputError as err:
        raise InvalidInput(f"Input image: {err}") from None


def control_map(spec: AppSpec, manager, image: np.ndarray, request: Request) -> np.ndarray:
    """Section a.1: H×W from resize_image(image, image_resolution); the detector runs on
    resize_image(image, detect_resolution) (or on the H×W image) and its map is resized to H×W."""
    values = request.values
    try:
        target = resize_image(image, values["image_resolution"])
        source = target if spec.detect_resolution is None else resize_image(image, values["detect_resolution"])
        detector = manager.annotator(spec.annotator)
        return detector.control_map(source, target.shape[:2], **request.detector_values)
    except AnnotatorInputError as err:
        raise InvalidInput(f"Input image: {err}") from None


@dataclass(frozen=True)
class AppResult:
    display_map: np.ndarray
    samples: list[np.ndarray]
    seed: int


def run_app(spec: AppSpec, manager, image: Any, request: Request,
            on_step: Callable[[int, int], bool | None] | None = None,
            on_status: Callable[[str], None] | None = None) -> AppResult:
    """Detect, then generate: the one path shared by the pages and the CLI.

    `on_step(done, total)` is called after every DDIM step; returning False cancels
    (`cldm.ddim.SamplingCancelled` is raised). `on_status(text)` reports the phase.
    """
    status = on_status or (lambda text: None)
    image = input_image(spec, image)
    status("Detecting the control map")
    detected = control_map(spec, manager, image, request)
    status("Loading the model")
    values = request.values
    params = GenerationParams(
        prompt=request.prompt, a_prompt=request.a_prompt, n_prompt=request.n_prompt,
        num_samples=values["num_samples"], image_resolution=values["image_resolution"],
        steps=values["ddim_steps"], guess_mode=values["guess_mode"], strength=values["strength"],
        scale=values["scale"], seed=values["seed"], eta=values["eta"],
    )
    callback = None if on_step is None else (lambda i, total, x, x0: on_step(i + 1, total))
    with manager.activate(request.weights) as model:
        status("Sampling")
        result = generate(model, np.ascontiguousarray(spec.to_control(detected)), params, callback)
    return AppResult(display_map=spec.display(detected), samples=result.images, seed=result.seed)
