"""The multi-condition page: up to three control units (image, annotator, ControlNet weights, strength and
active window) steering one generation under one control mode. The checks, maps and generation are in
`apps/multi_request.py`; this file lays out the page and serves `/multi` (units as JSON + one file per unit)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from contextlib import aclosing

import gradio as gr

from apps.backend import Backend
from apps.builder import (GENERATE_SLOT, CancelToken, CheckedImage, Dropdown, Page, choice_inputs, fast_switch,
                          guarded_stream, param_component, result_line, stream_update, wire_fast)
from apps.components import Radio, show_notes
from apps.controls import A_PROMPT, END, N_PROMPT, SCALE, START, STEPS, STRENGTH, check_choices
from apps.image_settings import save_multi_results
from apps.multi_request import (ANNOTATOR_APPS, ANNOTATOR_TITLES, COMMON, DEFAULT_WEIGHTS, NO_ANNOTATOR, MultiRequest,
                                MultiResult, Unit,
                                check_unit, run_multi, units_from_json, validate_multi)
from apps.restore_drop import multi_restorer, restore_drop, wire_restore
from apps.space import gpu_seconds, zero_gpu
from cldm.control import ControlMode
from cldm.control_bank import MAX_UNITS, ControlBank
from weights.table import CONTROLNETS, WEIGHTS

NAME = "multi"
TITLE = "Multi-ControlNet"
MODES: dict[ControlMode, tuple[str, str]] = {
    ControlMode.BALANCED: ("Balanced", "control on both guidance branches, the same weight on all 13 blocks "
                                       "(the original's normal mode)"),
    ControlMode.GUESS: ("Guess", "control on the prompt branch only, shallow blocks weaker (0.825^(12−i)); "
                                 "recognises content even with an empty prompt"),
    ControlMode.CFG_RESOLUTION_WEIGHTING: ("CFG resolution weighting",
                                           "control on the prompt branch only, block weight 64/h (its latent "
                                           "height): strong at the coarse blocks, good at high guidance"),
}


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
                          [(ANNOTATOR_TITLES[n], n) for n in ANNOTATOR_APPS]
                chosen = Dropdown(label="Annotator", choices=choices, value=default, elem_id=f"{prefix}-annotator")
                weights = Dropdown(label="ControlNet weights", choices=[(WEIGHTS[k].label, k) for k in CONTROLNETS],
                                   value=DEFAULT_WEIGHTS[default], elem_id=f"{prefix}-weights")
                strength = param_component(STRENGTH, f"{prefix}-strength")
                with gr.Row():
                    start = param_component(START, f"{prefix}-start")
                    end = param_component(END, f"{prefix}-end")
    # A user's pick proposes that annotator's weights (`input`: a restore sets both and keeps its weights).
    chosen.input(lambda name: DEFAULT_WEIGHTS.get(name, gr.skip()), chosen, weights, queue=False,
                 api_visibility="private")
    return [image, chosen, weights, strength, start, end]


def build_multi_page(backend: Backend, status_line: Callable[[], str]) -> None:
    """The multi-condition page inside the current Blocks/Tab context; serves `/multi`."""
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
            fast = fast_switch(NAME)
            with gr.Accordion("Advanced options", open=False, elem_id=f"{NAME}-advanced"):
                controls = [param_component(p, f"{NAME}-{p.name}") for p in COMMON]
                a_prompt = gr.Textbox(label="Added Prompt", value=A_PROMPT)
                n_prompt = gr.Textbox(label="Negative Prompt", value=N_PROMPT)
                choices = choice_inputs(backend, NAME)
            gr.Markdown("A unit is active at sampling step i of n when start ≤ i/n < end. Units whose image has "
                        "another aspect ratio are stretched to the first unit's size.")
        with gr.Column():
            gallery = gr.Gallery(label="Output", show_label=False, elem_id=f"{NAME}-gallery", columns=2, height="auto",
                                 object_fit="contain", format="png")
            seed_used = gr.Markdown(elem_id=f"{NAME}-seed-used")
            status = gr.Markdown(status_line(), elem_id=f"{NAME}-status")
            drop, restore_message, restored = restore_drop(NAME)
            # The API's structured input (docs/multi.md); not shown on the page.
            units_json = gr.JSON(visible=False, label="units")
            unit_images = gr.File(file_count="multiple", type="filepath", visible=False, label="images")
            api_trigger = gr.Button(visible=False)

    names = [p.name for p in COMMON]

    async def respond(cancel: CancelToken, make_units: Callable[[], list[Unit]], prompt_value, rest, progress):
        values = dict(zip(names, rest[: len(names)]))
        a_value, n_value, mode_value, fast_value, *choice_values = rest[len(names):]

        def work(on_step, on_status, on_preview) -> tuple[MultiRequest, MultiResult, list[Path]]:
            choices = check_choices(choice_values[0], fast_value, *choice_values[1:], lora_files=backend.lora_files)
            request = validate_multi(make_units(), values, prompt_value, a_value, n_value, mode_value, choices)
            on_status("Detecting the control maps")
            result = run_multi(backend, request, on_step=on_step, on_status=on_status, on_preview=on_preview)
            return request, result, save_multi_results(backend, request, result)

        async with aclosing(guarded_stream(cancel, progress, work, backend.runs, NAME)) as stream:
            async for kind, value in stream:
                if kind != "result":
                    yield stream_update(kind, value)
        request, result, files = value
        maps = [(str(f), f"unit {u.number}: " + ("the image (no annotator)" if u.annotator == NO_ANNOTATOR else f"{u.annotator} map"))
                for u, f in zip(request.units, files)]
        samples = [(str(f), f"sample {i + 1}") for i, f in enumerate(files[len(request.units):])]
        line = result_line(result.seed, request.choices.sampler, request.values["ddim_steps"], request.choices.fast)
        yield maps + samples, line, f"{status_line()} · {_bank_text(backend.bank)}"

    async def process_page(cancel: CancelToken, *args, progress=gr.Progress()):
        show_notes(*args)
        per_unit = len(unit_inputs[0])
        fields = [args[k * per_unit:(k + 1) * per_unit] for k in range(MAX_UNITS)]
        rest = args[MAX_UNITS * per_unit:]

        def make_units() -> list[Unit]:
            return [check_unit(k, *f) for k, f in enumerate(fields, start=1) if f[0] is not None]

        async with aclosing(respond(cancel, make_units, rest[0], rest[1:], progress)) as updates:
            async for update in updates:
                yield update

    async def process_api(cancel: CancelToken, units, images, prompt_value, *rest, progress=gr.Progress()):
        async with aclosing(respond(cancel, lambda: units_from_json(units, images), prompt_value, rest, progress)) as updates:
            async for update in updates:
                yield update

    per_unit = len(unit_inputs[0])

    def page_duration(cancel, *args, **kwargs) -> int:
        values = dict(zip(names, args[MAX_UNITS * per_unit + 1:]))
        used = sum(args[k * per_unit] is not None for k in range(MAX_UNITS))
        return gpu_seconds(values.get("ddim_steps"), values.get("num_samples"), values.get("image_resolution"), used)

    def api_duration(cancel, units, images, prompt_value, *rest, **kwargs) -> int:
        values = dict(zip(names, rest))
        used = len(units) if isinstance(units, list) else MAX_UNITS
        return gpu_seconds(values.get("ddim_steps"), values.get("num_samples"), values.get("image_resolution"), used)

    process_page = zero_gpu(process_page, page_duration)
    process_api = zero_gpu(process_api, api_duration)
    wire_fast(fast, controls[names.index(STEPS.name)], controls[names.index(SCALE.name)], choices, restored)
    common = [prompt, *controls, a_prompt, n_prompt, mode, fast, *choices]
    restorable = [c for unit in unit_inputs for c in unit[1:]] + common
    wire_restore(drop, restore_message, restored, fast, restorable, multi_restorer(backend, MAX_UNITS, names))
    outputs = [gallery, seed_used, status]
    page_inputs = [token, *(c for unit in unit_inputs for c in unit), *common]
    events = [
        run.click(process_page, page_inputs, outputs, api_visibility="private", **GENERATE_SLOT),
        prompt.submit(process_page, page_inputs, outputs, api_visibility="private", **GENERATE_SLOT),
        api_trigger.click(process_api, [token, units_json, unit_images, *common], outputs, api_name=NAME,
                          **GENERATE_SLOT),
    ]
    stop.click(CancelToken.stop, [token], None, cancels=events, queue=False, api_visibility="private")


def _bank_text(bank: ControlBank) -> str:
    s = bank.status()
    return f"extra resident ControlNets: {', '.join(s['bank_controls']) or 'none'} (at most {s['bank_capacity']})"


def multi_page() -> Page:
    return Page(NAME, TITLE, build_multi_page)
