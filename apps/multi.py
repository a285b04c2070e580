"""The multi-condition page: up to three control units (image, annotator, ControlNet weights, strength and
active window) steering one generation through `cldm.pipeline.generate_multi`, under one control mode.

The UI-free part (`check_unit`, `validate_multi`, `run_multi`) checks every value on the server and turns the
units into control maps the way the single apps do (each annotator through its app's declaration: detect
resolution, map resizing, what the network is fed and what is shown). `build_multi_page` lays out the page;
it serves `/multi`, which takes the units as a JSON list plus one image file per unit (docs/multi.md).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import gradio as gr
import numpy as np

from annotator.registry import REGISTRY, Param, available
from annotator.util import AnnotatorInputError, check_image, resize_image
from apps import APPS, MULTI_PAGE
from apps.builder import CancelToken, CheckedImage, Dropdown, guarded_run, param_component
from apps.components import Radio
from apps.spec import (ETA, IMAGE_RESOLUTION, NUM_SAMPLES, SCALE, SEED, STEPS, STRENGTH, A_PROMPT, N_PROMPT, AppSpec,
                       InvalidInput, Request, check_param, check_text, control_map, read_image)
from cldm.control_bank import MAX_UNITS, ControlBank, ControlBankError
from cldm.hub import CN10, CN11, WEIGHTS
from cldm.multi import ControlMode, ControlUnit
from cldm.pipeline import GenerationParams, generate_multi

NAME = MULTI_PAGE
TITLE = "Multi-ControlNet"
NO_ANNOTATOR = "none"
CONTROL_WEIGHTS: tuple[str, ...] = tuple(key for key, w in WEIGHTS.items() if w.repo in (CN10, CN11))
START = Param("start", "Start", 0.0, 0.0, 1.0, 0.01)
END = Param("end", "End", 1.0, 0.0, 1.0, 0.01)
COMMON = (NUM_SAMPLES, IMAGE_RESOLUTION, STEPS, SCALE, SEED, ETA)
UNIT_KEYS = ("annotator", "weights", "strength", "start", "end", "params")
MODES: dict[ControlMode, tuple[str, str]] = {
    ControlMode.BALANCED: ("Balanced", "control on both guidance branches, the same weight on all 13 blocks "
                                       "(the original's normal mode)"),
    ControlMode.GUESS: ("Guess", "control on the prompt branch only, shallow blocks weaker (0.825^(12−i)); "
                                 "recognises content even with an empty prompt"),
    ControlMode.CFG_RESOLUTION_WEIGHTING: ("CFG resolution weighting",
                                           "control on the prompt branch only, block weight 64/h (its latent "
                                           "height): strong at the coarse blocks, good at high guidance"),
}

# Each annotator runs as its single app does (the first app declaring it); one without an app runs with its
# registry parameters on the image-resolution image.
ANNOTATOR_APPS: dict[str, AppSpec] = {}
for _spec in APPS.values():
    if not _spec.canvas:
        ANNOTATOR_APPS.setdefault(_spec.annotator, _spec)
for _name in available():
    ANNOTATOR_APPS.setdefault(_name, AppSpec(_name, REGISTRY[_name].title, _name, CONTROL_WEIGHTS, REGISTRY[_name].params))
DEFAULT_WEIGHTS = {name: spec.weights[0] for name, spec in ANNOTATOR_APPS.items()}


# ---- validation -------------------------------------------------------------------------------------------------


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
            raise InvalidInput(f"unknown annotator {annotator!r}; choose {NO_ANNOTATOR} (the image is the map) "
                               f"or one of {', '.join(ANNOTATOR_APPS)}")
        if weights is None or weights == "":
            if annotator == NO_ANNOTATOR:
                raise InvalidInput(f"ControlNet weights are required with annotator {NO_ANNOTATOR}")
            weights = DEFAULT_WEIGHTS[annotator]
        if weights not in CONTROL_WEIGHTS:
            raise InvalidInput(f"ControlNet weights {weights!r} are unknown; choose one of {', '.join(CONTROL_WEIGHTS)}")
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
                   mode: Any) -> MultiRequest:
    """Check the common values of a request whose units were checked with `check_unit`."""
    if not units:
        raise InvalidInput("No input image: upload an image for at least one unit.")
    if len(units) > MAX_UNITS:
        raise InvalidInput(f"At most {MAX_UNITS} units, got {len(units)}.")
    if mode not in {m.value for m in ControlMode}:
        raise InvalidInput(f"Control mode: {mode!r} is not one of {', '.join(m.value for m in ControlMode)}")
    return MultiRequest(
        units=tuple(units),
        values={p.name: check_param(p, values.get(p.name)) for p in COMMON},
        prompt=check_text("Prompt", prompt),
        a_prompt=check_text("Added Prompt", a_prompt),
        n_prompt=check_text("Negative Prompt", n_prompt),
        mode=ControlMode(mode),
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
            raise InvalidInput(f"Unit {number}: 'annotator' is required ({NO_ANNOTATOR} or one of {', '.join(ANNOTATOR_APPS)})")
        try:
            image = read_image(path)
        except InvalidInput as err:
            raise InvalidInput(f"Unit {number}: {err}") from None
        checked.append(check_unit(number, image, **unit))
    return checked


# ---- maps and generation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiResult:
    maps: list[np.ndarray]  # one display map per unit
    samples: list[np.ndarray]
    seed: int


def unit_maps(manager, unit: Unit, resolution: int, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(control map, display map) of `unit`, at H×W = `size` (the first unit's) or from its own image."""
    image = unit.image
    try:
        if size is not None and resize_image(image, resolution).shape[:2] != size:
            image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)  # another aspect: stretched
        if unit.annotator == NO_ANNOTATOR:
            control = np.ascontiguousarray(resize_image(image, resolution))
            return control, control
        spec = ANNOTATOR_APPS[unit.annotator]
        values = {"image_resolution": resolution, **unit.params}
        request = Request(values=values, detector_values={p.name: values[p.name] for p in spec.params},
                          prompt="", a_prompt="", n_prompt="", weights=unit.weights)
        detected = control_map(spec, manager, image, request)
    except AnnotatorInputError as err:
        raise InvalidInput(f"Unit {unit.number}: image: {err}") from None
    return np.ascontiguousarray(spec.to_control(detected)), spec.display(detected)


def run_multi(manager, bank: ControlBank, request: MultiRequest,
              on_step: Callable[[int, int], bool | None] | None = None,
              on_status: Callable[[str], None] | None = None) -> MultiResult:
    """Detect every unit's map, then generate with all units; `on_step`/`on_status` as `apps.spec.run_app`."""
    status = on_status or (lambda text: None)
    values = request.values
    controls, shown, size = [], [], None
    for unit in request.units:
        status(f"Detecting the control map of unit {unit.number}")
        control, display = unit_maps(manager, unit, values["image_resolution"], size)
        size = control.shape[:2]
        controls.append(control)
        shown.append(display)
    params = GenerationParams(
        prompt=request.prompt, a_prompt=request.a_prompt, n_prompt=request.n_prompt,
        num_samples=values["num_samples"], image_resolution=values["image_resolution"], steps=values["ddim_steps"],
        scale=values["scale"], seed=values["seed"], eta=values["eta"],
    )
    callback = None if on_step is None else (lambda i, total, x, x0: on_step(i + 1, total))
    status("Loading the ControlNets")
    with bank.hold([u.weights for u in request.units]) as (model, nets):
        units = [ControlUnit(nets[u.weights], c, u.strength, u.start, u.end) for u, c in zip(request.units, controls)]
        status("Sampling")
        result = generate_multi(model, units, params, request.mode, callback)
    return MultiResult(maps=shown, samples=result.images, seed=result.seed)


# ---- the page -------------------------------------------------------------------------------------------------


def _unit_inputs(number: int) -> list[gr.components.Component]:
    prefix = f"{NAME}-unit{number}"
    with gr.Group(elem_id=prefix):
        gr.Markdown(f"**Unit {number}**" + (" (used when it has an image)" if number > 1 else ""))
        with gr.Row():
            image = CheckedImage(label="Control image", sources=["upload"], type="numpy", image_mode=None,
                                 elem_id=f"{prefix}-image", height=220)
            with gr.Column():
                default = "canny" if number == 1 else "depth" if number == 2 else "openpose"
                choices = [(f"{NO_ANNOTATOR} (the image is the map)", NO_ANNOTATOR)] + \
                          [(REGISTRY[n].title, n) for n in ANNOTATOR_APPS]
                chosen = Dropdown(label="Annotator", choices=choices, value=default, elem_id=f"{prefix}-annotator")
                weights = Dropdown(label="ControlNet weights", choices=[(WEIGHTS[k].role, k) for k in CONTROL_WEIGHTS],
                                   value=DEFAULT_WEIGHTS[default], elem_id=f"{prefix}-weights")
                strength = param_component(STRENGTH, f"{prefix}-strength")
                with gr.Row():
                    start = param_component(START, f"{prefix}-start")
                    end = param_component(END, f"{prefix}-end")
    chosen.change(lambda name: DEFAULT_WEIGHTS.get(name, gr.skip()), chosen, weights, queue=False,
                  api_visibility="private")
    return [image, chosen, weights, strength, start, end]


def build_multi_page(manager, status_line: Callable[[], str]) -> None:
    """The multi-condition page inside the current Blocks/Tab context; serves `/multi`."""
    bank = ControlBank(manager)
    token = gr.State(CancelToken())
    gr.Markdown(f"## {TITLE}: control Stable Diffusion with up to {MAX_UNITS} conditions")
    with gr.Row():
        with gr.Column():
            unit_inputs = [_unit_inputs(k) for k in range(1, MAX_UNITS + 1)]
            prompt = gr.Textbox(label="Prompt", elem_id=f"{NAME}-prompt")
            mode = Radio(label="Control mode", choices=[(title, m.value) for m, (title, _) in MODES.items()],
                            value=ControlMode.BALANCED.value, elem_id=f"{NAME}-mode")
            gr.Markdown("\n".join(f"* **{title}**: {text}." for title, text in MODES.values()))
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id=f"{NAME}-run")
                stop = gr.Button("Stop", variant="stop", elem_id=f"{NAME}-stop")
            with gr.Accordion("Advanced options", open=False, elem_id=f"{NAME}-advanced"):
                controls = [param_component(p, f"{NAME}-{p.name}") for p in COMMON]
                a_prompt = gr.Textbox(label="Added Prompt", value=A_PROMPT)
                n_prompt = gr.Textbox(label="Negative Prompt", value=N_PROMPT)
            gr.Markdown("A unit is active at DDIM step i of n when start ≤ i/n < end. Units whose image has "
                        "another aspect ratio are stretched to the first unit's size.")
        with gr.Column():
            gallery = gr.Gallery(label="Output", show_label=False, elem_id=f"{NAME}-gallery", columns=2, height="auto",
                                 object_fit="contain", format="png")
            seed_used = gr.Markdown(elem_id=f"{NAME}-seed-used")
            status = gr.Markdown(status_line(), elem_id=f"{NAME}-status")
            # The API's structured input (docs/multi.md); not shown on the page.
            units_json = gr.JSON(visible=False, label="units")
            unit_images = gr.File(file_count="multiple", type="filepath", visible=False, label="images")
            api_trigger = gr.Button(visible=False)

    names = [p.name for p in COMMON]

    def respond(cancel: CancelToken, make_units: Callable[[], list[Unit]], prompt_value, rest, progress):
        values = dict(zip(names, rest[: len(names)]))
        a_value, n_value, mode_value = rest[len(names):]

        def work(on_step, on_status) -> tuple[MultiRequest, MultiResult]:
            request = validate_multi(make_units(), values, prompt_value, a_value, n_value, mode_value)
            on_status("Detecting the control maps")
            return request, run_multi(manager, bank, request, on_step=on_step, on_status=on_status)

        request, result = guarded_run(cancel, progress, work, extra_errors=(ControlBankError,))
        maps = [(m, f"unit {u.number}: " + ("the image (no annotator)" if u.annotator == NO_ANNOTATOR else f"{u.annotator} map"))
                for u, m in zip(request.units, result.maps)]
        samples = [(s, f"sample {i + 1}") for i, s in enumerate(result.samples)]
        return maps + samples, f"Seed used: **{result.seed}**", f"{status_line()} · {_bank_text(bank)}"

    def process_page(cancel: CancelToken, *args, progress=gr.Progress()):
        per_unit = len(unit_inputs[0])
        fields = [args[k * per_unit:(k + 1) * per_unit] for k in range(MAX_UNITS)]
        rest = args[MAX_UNITS * per_unit:]

        def make_units() -> list[Unit]:
            return [check_unit(k, *f) for k, f in enumerate(fields, start=1) if f[0] is not None]

        return respond(cancel, make_units, rest[0], rest[1:], progress)

    def process_api(cancel: CancelToken, units, images, prompt_value, *rest, progress=gr.Progress()):
        return respond(cancel, lambda: units_from_json(units, images), prompt_value, rest, progress)

    common = [prompt, *controls, a_prompt, n_prompt, mode]
    outputs = [gallery, seed_used, status]
    page_inputs = [token, *(c for unit in unit_inputs for c in unit), *common]
    events = [
        run.click(process_page, page_inputs, outputs, api_visibility="private", concurrency_id="generate"),
        prompt.submit(process_page, page_inputs, outputs, api_visibility="private", concurrency_id="generate"),
        api_trigger.click(process_api, [token, units_json, unit_images, *common], outputs, api_name=NAME,
                          concurrency_id="generate"),
    ]
    stop.click(CancelToken.stop, [token], None, cancels=events, queue=False, api_visibility="private")


def _bank_text(bank: ControlBank) -> str:
    s = bank.status()
    return f"extra resident ControlNets: {', '.join(s['bank_controls']) or 'none'} (at most {s['bank_capacity']})"
