"""The "Restore settings from a PNG" drop target of the generation pages: a PNG made here (its `parameters`
chunk, `apps.png_info`) fills the page's controls; one from another page or without settings gets a message
and changes nothing. The checks are `apps.image_settings`'."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr

from apps.backend import Backend
from apps.controls import FAST_SCALE, FAST_STEPS, SAMPLER_CHOICES, SCALE, STEPS, sampler_summary
from apps.errors import USER_ERRORS
from apps.image_settings import MultiRestored, restore_app, restore_multi
from apps.png_info import ImageInfo, read_png_info
from apps.spec import AppSpec

# (updates for the page's controls, the message, the Fast switch's restored value)
Restorer = Callable[[ImageInfo], tuple[list, str, bool]]


def restore_drop(prefix: str) -> tuple[gr.File, gr.Markdown, gr.State]:
    """The drop target, its message line, and the state that tells the Fast switch a restore set it."""
    drop = gr.File(label="Restore settings from a PNG made here", file_types=[".png"], type="filepath",
                   elem_id=f"{prefix}-restore", height=120)
    return drop, gr.Markdown(elem_id=f"{prefix}-restore-message"), gr.State(None)


def wire_restore(drop: gr.File, message: gr.Markdown, restored: gr.State, fast: gr.Checkbox,
                 outputs: Sequence[gr.components.Component], restore: Restorer) -> None:
    """An upload on `drop` runs `restore` on the PNG's settings and updates `outputs` (which include `fast`)."""
    skipped = [gr.skip()] * len(outputs)

    def on_upload(path, fast_now):
        if path is None:
            return [*skipped, gr.skip(), gr.skip(), gr.skip()]
        try:
            updates, text, fast_value = restore(read_png_info(path, Path(path).name))
        except USER_ERRORS as err:
            return [*skipped, f"**Settings not restored.** {err}", gr.skip(), None]
        # Only a change of the switch fires its handler, which then leaves the restored steps and guidance alone.
        return [*updates, text, fast_value if fast_value != fast_now else None, None]

    drop.upload(on_upload, [drop, fast], [*outputs, message, restored, drop], queue=False, api_visibility="private")


def _sliders(fast: bool, steps: int, scale: float) -> tuple:
    s, g = (FAST_STEPS, FAST_SCALE) if fast else (STEPS, SCALE)
    return (gr.Slider(minimum=s.minimum, maximum=s.maximum, value=steps),
            gr.Slider(minimum=g.minimum, maximum=g.maximum, value=scale))


def _choices(choices, lora_names: list[str], lora_scale: float) -> list:
    return [gr.Dropdown(choices=SAMPLER_CHOICES, value=choices.sampler, interactive=not choices.fast), lora_names, lora_scale,
            choices.fast_decode]


def _message(info: ImageInfo, title: str, notes: Sequence[str]) -> str:
    text = (f"Restored the settings of a {title} image: seed {info.seed}, {sampler_summary(info.sampler, info.steps)}, "
            f"{info.width}×{info.height}.")
    return text + "".join(f" Note: {note}." for note in notes)


def app_restorer(spec: AppSpec, backend: Backend) -> Restorer:
    """For a single app's outputs: (the inpaint page's mask image: left as it is), prompt, (a 1.1 page's
    Preprocessor), every control, added and negative prompt, weights, Fast, the choices."""

    def restore(info: ImageInfo) -> tuple[list, str, bool]:
        restored = restore_app(spec, info, backend.lora_files)
        request = restored.request
        fast = request.choices.fast
        steps, scale = _sliders(fast, request.values[STEPS.name], request.values[SCALE.name])
        controls = [steps if p.name == STEPS.name else scale if p.name == SCALE.name else request.values[p.name]
                    for p in spec.controls]
        leading = [*([gr.skip()] if spec.paint_mask else []), request.prompt,
                   *([request.preprocessor.label] if spec.preprocessor_radio else [])]
        updates = [*leading, *controls, request.a_prompt, request.n_prompt, request.weights, fast,
                   *_choices(request.choices, restored.lora_names, restored.lora_scale)]
        return updates, _message(info, spec.title, restored.notes), fast

    return restore


def multi_restorer(backend: Backend, units: int, common: Sequence[str]) -> Restorer:
    """For the multi-condition page's outputs: per unit (annotator, weights, strength, start, end), prompt, the
    `common` controls, added and negative prompt, control mode, Fast, the choices. Units the PNG does not list
    are left as they are."""

    def restore(info: ImageInfo) -> tuple[list, str, bool]:
        restored: MultiRestored = restore_multi(info, backend.lora_files)
        per_unit = []
        for number in range(1, units + 1):
            u = restored.units.get(number)
            per_unit += [u.annotator, u.weights, u.strength, u.start, u.end] if u else [gr.skip()] * 5
        fast = restored.choices.fast
        values = restored.values
        steps, scale = _sliders(fast, values[STEPS.name], values[SCALE.name])
        controls = [steps if n == STEPS.name else scale if n == SCALE.name else values[n] for n in common]
        lora_names = [Path(path).name for path, _ in restored.choices.loras]
        lora_scale = restored.choices.loras[0][1] if restored.choices.loras else gr.skip()
        updates = [*per_unit, restored.prompt, *controls, restored.a_prompt, restored.n_prompt, restored.mode, fast,
                   *_choices(restored.choices, lora_names, lora_scale)]
        used = ", ".join(str(n) for n in restored.units)
        notes = [f"it used unit(s) {used}: give them their images", *restored.notes]
        return updates, _message(info, "Multi-ControlNet", notes), fast

    return restore
