"""The multi-condition page without its UI: up to three control units (image, annotator, ControlNet weights,
strength and active window) checked on the server, turned into control maps the way the single apps make
them (each annotator through its app's declaration: detect resolution, map resizing, what the network is fed
and what is shown), and one generation with all of them (`cldm.pipeline.generate_multi`).

The API takes the units as a JSON list plus one image file per unit (`units_from_json`, docs/multi.md).
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from annotator.registry import REGISTRY, available
from annotator.util import AnnotatorInputError, check_image, resize_image
from apps.backend import Backend
from apps.controls import (END, ETA, IMAGE_RESOLUTION, NUM_SAMPLES, SCALE, SEED, START, STEPS, STRENGTH, Choices,
                           check_param, check_text, with_fast_ranges)
from apps.errors import InvalidInput
from apps.images import read_image
from apps.registry import APPS
from apps.spec import AppSpec, control_map, generation_params, step_callback
from apps.v11.common import preprocessed, preprocessed_maps
from cldm.control import ControlMode, ControlUnit
from cldm.control_bank import MAX_UNITS
from cldm.pipeline import generate_multi
from weights.table import CONTROLNETS

NO_ANNOTATOR = "none"
COMMON = (NUM_SAMPLES, IMAGE_RESOLUTION, STEPS, SCALE, SEED, ETA)
UNIT_KEYS = ("annotator", "weights", "strength", "start", "end", "params")

# Each annotator runs as its single app does (the first 1.0 app declaring it); one without an app runs with its
# registry parameters on the image-resolution image. Each Preprocessor choice of a 1.1 app with the standard
# 1.1 condition is a unit annotator too ("v11_softedge/SoftEdge_PIDI_safe"), made as that app makes it. Apps
# that need more than a map (shuffle, tile, inpaint: a control mode or a start image; anime: its own text
# encoding) do not join.
ANNOTATOR_APPS: dict[str, AppSpec] = {}
ANNOTATOR_TITLES: dict[str, str] = {}
for _spec in APPS.values():
    if _spec.annotator and not _spec.canvas and _spec.condition is None:
        ANNOTATOR_APPS.setdefault(_spec.annotator, _spec)
for _name in available():
    ANNOTATOR_APPS.setdefault(_name, AppSpec(_name, REGISTRY[_name].title, _name, CONTROLNETS, REGISTRY[_name].params))
ANNOTATOR_TITLES.update({name: REGISTRY[name].title for name in ANNOTATOR_APPS})
for _spec in APPS.values():
    if _spec.condition is preprocessed and not _spec.generation:
        for _choice in _spec.preprocessors:
            ANNOTATOR_APPS[f"{_spec.name}/{_choice.label}"] = replace(_spec, preprocessors=(_choice,))
            ANNOTATOR_TITLES[f"{_spec.name}/{_choice.label}"] = f"1.1 {_spec.title}: {_choice.label}"
DEFAULT_WEIGHTS = {name: spec.weights[0] for name, spec in ANNOTATOR_APPS.items()}


@dataclass(frozen=True)
class Unit:
    """One checked control unit: its image (H×W×3 uint8) and everything that makes its map and its control."""

    number: int
    image: np.ndarray
    annotator: str
    weights: str
    strength: float
    start: float
    end: float
    params: Mapping[str, Any]  # the annotator app's extra controls (detect resolution, thresholds), checked


@dataclass(frozen=True)
class MultiRequest:
    units: tuple[Unit, ...]
    values: dict[str, Any]  # the common controls by name
    prompt: str
    a_prompt: str
    n_prompt: str
    mode: ControlMode
    choices: Choices


def _shown(value: Any) -> str:
    return repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."


def annotator_hint(given: Any) -> str:
    """What to choose instead of `given`: the closest annotator names (the list is long with the 1.1 choices)."""
    close = difflib.get_close_matches(given, ANNOTATOR_APPS, n=3) if isinstance(given, str) else []
    return (f"choose {NO_ANNOTATOR} (the image is the map) or an annotator of the page's list, "
            f"e.g. {', '.join(close or list(ANNOTATOR_APPS)[:3])} ({len(ANNOTATOR_APPS)} in all)")


def check_unit(number: int, image: Any, annotator: Any, weights: Any = None, strength: Any = STRENGTH.default,
               start: Any = START.default, end: Any = END.default, params: Any = None) -> Unit:
    """Unit `number` (1-based) checked; InvalidInput says which unit and which value is wrong."""
    try:
        if image is None:
            raise InvalidInput("no image")
        try:
            image = check_image(image)
        except AnnotatorInputError as err:
            raise InvalidInput(f"image: {err}") from None
        if not isinstance(annotator, str) or annotator != NO_ANNOTATOR and annotator not in ANNOTATOR_APPS:
            raise InvalidInput(f"unknown annotator {_shown(annotator)}; {annotator_hint(annotator)}")
        if weights is None or weights == "":
            if annotator == NO_ANNOTATOR:
                raise InvalidInput(f"ControlNet weights are required with annotator {NO_ANNOTATOR}")
            weights = DEFAULT_WEIGHTS[annotator]
        if not isinstance(weights, str) or weights not in CONTROLNETS:
            close = difflib.get_close_matches(weights, CONTROLNETS, n=3) if isinstance(weights, str) else []
            shown = repr(weights) if len(repr(weights)) <= 60 else repr(weights)[:57] + "..."
            raise InvalidInput(f"ControlNet weights {shown} are unknown; use a ControlNet key of weights/table.py "
                               f"(the page's weights list), e.g. {', '.join(close or CONTROLNETS[:3])}")
        strength, start, end = (check_param(p, v) for p, v in ((STRENGTH, strength), (START, start), (END, end)))
        if start >= end:
            raise InvalidInput(f"End ({end}) must be greater than Start ({start})")
        return Unit(number, image, annotator, weights, strength, start, end, _unit_params(annotator, params))
    except InvalidInput as err:
        raise InvalidInput(f"Unit {number}: {err}") from None


def _unit_params(annotator: str, params: Any) -> dict[str, Any]:
    extras = () if annotator == NO_ANNOTATOR else ANNOTATOR_APPS[annotator].extras
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InvalidInput(f"params must be an object of annotator settings, got {type(params).__name__}")
    unknown = sorted(set(params) - {p.name for p in extras})
    if unknown:
        raise InvalidInput(f"annotator {annotator} has no setting(s) {', '.join(map(str, unknown))}; "
                           f"accepted: {', '.join(p.name for p in extras) or 'none'}")
    return {p.name: check_param(p, params.get(p.name, p.default)) for p in extras}


def validate_multi(units: Sequence[Unit], values: Mapping[str, Any], prompt: Any, a_prompt: Any, n_prompt: Any,
                   mode: Any, choices: Choices = Choices()) -> MultiRequest:
    """Check the common values of a request whose units were checked with `check_unit`."""
    if not units:
        raise InvalidInput("No input image: upload an image for at least one unit.")
    if len(units) > MAX_UNITS:
        raise InvalidInput(f"At most {MAX_UNITS} units, got {len(units)}.")
    if mode not in {m.value for m in ControlMode}:
        raise InvalidInput(f"Control mode: {mode!r} is not one of {', '.join(m.value for m in ControlMode)}")
    return MultiRequest(
        units=tuple(units),
        values={p.name: check_param(p, values.get(p.name)) for p in with_fast_ranges(COMMON, choices.fast)},
        prompt=check_text("Prompt", prompt),
        a_prompt=check_text("Added Prompt", a_prompt),
        n_prompt=check_text("Negative Prompt", n_prompt),
        mode=ControlMode(mode),
        choices=choices,
    )


def units_from_json(units: Any, images: Any) -> list[Unit]:
    """The API's units: a JSON list of objects (keys UNIT_KEYS, `annotator` required), unit i using image i."""
    if isinstance(units, str):
        try:
            units = json.loads(units)
        except json.JSONDecodeError as err:
            raise InvalidInput(f"units: not valid JSON ({err})") from None
    if not isinstance(units, list) or not all(isinstance(u, dict) for u in units):
        raise InvalidInput("units: expected a JSON list of objects, e.g. "
                           '[{"annotator": "canny", "weights": "cn10_canny", "strength": 1, "start": 0, "end": 1}]')
    images = list(images or [])
    if len(images) != len(units):
        raise InvalidInput(f"units: {len(units)} unit(s) but {len(images)} image file(s); send one image per unit, in order")
    if len(units) > MAX_UNITS:
        raise InvalidInput(f"At most {MAX_UNITS} units, got {len(units)}.")
    checked = []
    for number, (unit, path) in enumerate(zip(units, images), start=1):
        unknown = sorted(set(unit) - set(UNIT_KEYS))
        if unknown:
            raise InvalidInput(f"Unit {number}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(UNIT_KEYS)}")
        if "annotator" not in unit:
            raise InvalidInput(f"Unit {number}: 'annotator' is required; {annotator_hint(None)}")
        try:
            image = read_image(path)
        except InvalidInput as err:
            raise InvalidInput(f"Unit {number}: {err}") from None
        checked.append(check_unit(number, image, **unit))
    return checked


@dataclass(frozen=True)
class MultiResult:
    maps: list[np.ndarray]  # one display map per unit
    samples: list[np.ndarray]
    seed: int


def unit_maps(backend: Backend, unit: Unit, resolution: int, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(control map, display map) of `unit`, at H×W = `size` (the first unit's) or from its own image."""
    image = unit.image
    try:
        if size is not None and resize_image(image, resolution).shape[:2] != size:
            image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)  # another aspect: stretched
        if unit.annotator == NO_ANNOTATOR:
            control = np.ascontiguousarray(resize_image(image, resolution))
            return control, control
        spec = ANNOTATOR_APPS[unit.annotator]
        if spec.preprocessors:
            return preprocessed_maps(spec, backend, image, spec.preprocessors[0], resolution,
                                     unit.params.get("detect_resolution"), {p.name: unit.params[p.name] for p in spec.params})
        detected = control_map(spec, backend, image, resolution, unit.params.get("detect_resolution"),
                               {p.name: unit.params[p.name] for p in spec.params})
    except (AnnotatorInputError, InvalidInput) as err:
        raise InvalidInput(f"Unit {unit.number}: {str(err).removeprefix('Input image: ')}") from None
    return np.ascontiguousarray(spec.to_control(detected)), spec.display(detected)


def run_multi(backend: Backend, request: MultiRequest,
              on_step: Callable[[int, int], bool | None] | None = None,
              on_status: Callable[[str], None] | None = None,
              on_preview: Callable[[list[np.ndarray], int, int], None] | None = None) -> MultiResult:
    """Detect every unit's map, then generate with all units; `on_step`/`on_status` as `apps.spec.run_app`."""
    status = on_status or (lambda text: None)
    values = request.values
    controls, shown, size = [], [], None
    for unit in request.units:
        status(f"Detecting the control map of unit {unit.number}")
        control, display = unit_maps(backend, unit, values["image_resolution"], size)
        size = control.shape[:2]
        controls.append(control)
        shown.append(display)
    params = generation_params(values, request.prompt, request.a_prompt, request.n_prompt, request.choices.sampler)
    callback = step_callback(backend, on_step, on_preview)
    status("Loading the ControlNets")
    with backend.bank.hold([u.weights for u in request.units], request.choices.all_loras()) as (model, nets):
        units = [ControlUnit(nets[u.weights], c, u.strength, u.start, u.end) for u, c in zip(request.units, controls)]
        status("Sampling")
        decoder = backend.model.taesd() if request.choices.fast_decode else None
        result = generate_multi(model, units, params, request.mode, callback, decoder)
    return MultiResult(maps=shown, samples=result.images, seed=result.seed)
