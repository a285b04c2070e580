"""The shared Gradio builder: the original apps' page layout in Gradio 6, the annotator page, and the
server-side checks of everything a page (or an API caller) sends.

One `Blocks` serves one page or several as tabs (`build_demo`); every app gets a named API endpoint
(`/canny`, `/mlsd`, …, `/annotate_<section>` on the annotator page) and `/status` reports the shared
model's state (what was loaded how often) and the runs served.

Concurrency: one generation at a time per process (`GENERATE_SLOT`, shared by every app and the multi page,
which share one model whose ControlNet weights and LoRAs change per request; the model's lock covers the
swap, the merge and the sampling); annotator previews have a slot of their own (`ANNOTATE_SLOT`) and run
beside a generation. A generation runs in a worker thread owned by its event's generator (`guarded_stream`):
when Gradio cancels or closes it (Stop, `job.cancel()`, a closed page) the sampler stops at its next step and
the slot is free at once. The queue's bound (`--max-queue`) is Gradio's: beyond it a request is refused at once.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import numpy as np
import torch

from annotator.registry import REGISTRY, Param
from annotator.util import check_image, resize_image
from cldm.allocator import release_free_memory
from apps.backend import Backend
from apps.components import CheckedEditor, CheckedImage, Dropdown, Number, Radio, Slider, refusal, show_notes, user_error
from apps.controls import (DEFAULT_SAMPLER, FAST_SCALE, FAST_STEPS, LORA_SCALE, SAMPLER_CHOICES, SCALE,
                           SEED, STEPS, check_choices, check_param, sampler_summary)
from cldm.limits import FAST_SAMPLER
from apps.errors import USER_ERRORS, InvalidInput
from apps.image_settings import save_app_results
from apps.images import MaskedUpload
from apps.restore_drop import app_restorer, restore_drop, wire_restore
from apps.runs import RunLog
from apps.space import app_duration, zero_gpu
from apps.spec import AnnotatorSection, AppResult, AppSpec, run_app, validate
from cldm.ddim import SamplingCancelled
from weights.table import WEIGHTS

log = logging.getLogger(__name__)
T = TypeVar("T")

TINY_BANNER = "TINY RANDOM-WEIGHT MODE — outputs are noise, for testing only"
CSS = """
#tiny-banner { background: #b91c1c; color: white; padding: 6px 12px; border-radius: 6px; text-align: center; }
#tiny-banner p { color: white; font-weight: 700; margin: 0; }
"""
MAX_UPLOAD = "50mb"
CACHE_LIFETIME_S = 3600  # uploads and results Gradio keeps on disk are deleted after an hour (checked hourly)
# One generation at a time per process, shared by every app and the multi page: they share one model whose
# ControlNet weights and LoRAs change per request. Annotator previews have a slot of their own (see README).
GENERATE_SLOT = {"concurrency_id": "generate", "concurrency_limit": 1}
ANNOTATE_SLOT = {"concurrency_id": "annotate", "concurrency_limit": 1}


# ---- input components ---------------------------------------------------------------------------------------


def param_component(param: Param, elem_id: str | None = None) -> gr.components.Component:
    """The control for a Param: a checkbox (bool), a number box (no range/step) or a slider."""
    if param.kind is bool:
        return gr.Checkbox(label=param.label, value=param.default, elem_id=elem_id)
    if param.step is None or param.minimum is None or param.maximum is None:
        return Number(label=param.label, value=param.default, minimum=param.minimum, maximum=param.maximum, elem_id=elem_id)
    return Slider(label=param.label, minimum=param.minimum, maximum=param.maximum, value=param.default,
                     step=param.step, randomize=param is SEED, elem_id=elem_id)


def unexpected_error(err: Exception) -> gr.Error:
    log.exception("unexpected error while serving a request")
    if isinstance(err, torch.OutOfMemoryError):
        return refusal("Out of memory. Lower Images or Image Resolution, or start with --low-memory.")
    return gr.Error(f"Internal error ({type(err).__name__}: {err}). The server log has the details.", title="Internal error")


# ---- generation apps ------------------------------------------------------------------------------------------


class CancelToken:
    """The Stop button of one session (kept in a gr.State; deepcopy gives each session a fresh one).

    Every run has its own flag, so a run started after Stop cannot revive one that is still winding down."""

    def __init__(self):
        self._running: set[threading.Event] = set()
        self._lock = threading.Lock()

    def __deepcopy__(self, memo) -> CancelToken:
        return CancelToken()

    def __reduce__(self):  # a process boundary (ZeroGPU's worker) gets a fresh token, like a new session
        return CancelToken, ()

    @contextmanager
    def run(self, flag: threading.Event | None = None) -> Iterator[threading.Event]:
        """A run's flag (`flag`, or a new one), set by `stop` while the run lasts."""
        flag = flag if flag is not None else threading.Event()
        with self._lock:
            self._running.add(flag)
        try:
            yield flag
        finally:
            with self._lock:
                self._running.discard(flag)

    def stop(self) -> None:
        with self._lock:
            for flag in self._running:
                flag.set()


def _canvas_input(spec: AppSpec) -> CheckedEditor:
    width, height = spec.canvas
    with gr.Row():
        canvas_width = param_component(width, f"{spec.name}-canvas-width")
        canvas_height = param_component(height, f"{spec.name}-canvas-height")
    open_canvas = gr.Button("Open drawing canvas!", elem_id=f"{spec.name}-open-canvas")
    gr.Markdown("Draw with the black brush (its size is under the brush icon); the eraser and undo are in the toolbar.")
    sketch = CheckedEditor(
        label="Drawing", type="numpy", image_mode="RGBA", canvas_size=(width.default, height.default), sources=(),
        brush=gr.Brush(default_size=6, colors=["#000000"], default_color="#000000", color_mode="fixed"),
        eraser=gr.Eraser(default_size=16), layers=False, format="png", elem_id=f"{spec.name}-input",
    )

    def blank_canvas(w, h):
        try:
            w, h = check_param(width, w), check_param(height, h)
        except InvalidInput as err:
            raise user_error(err) from None
        white = np.full((h, w, 4), 255, np.uint8)
        return gr.Sketchpad(value={"background": white, "layers": [], "composite": white}, canvas_size=(w, h))

    open_canvas.click(blank_canvas, [canvas_width, canvas_height], sketch, queue=False, api_name=f"{spec.name}_canvas")
    return sketch


FAST_SWITCH = "-fast"  # elem_id suffix of every page's Fast switch


def fast_switch(prefix: str) -> gr.Checkbox:
    """Off when built, so the API's default stays the original's settings; `build_demo` switches it on when the
    page loads in a browser on a CPU (`Backend.fast_by_default`)."""
    return gr.Checkbox(label="Fast: LCM-LoRA, LCM sampler, 4 steps, guidance 1", value=False,
                       elem_id=prefix + FAST_SWITCH, info="Off: the original's settings (DDIM, 20 steps, guidance 9)")


def choice_inputs(backend: Backend, prefix: str) -> list[gr.components.Component]:
    """Sampler, LoRA files, LoRA scale and Fast decode (inside Advanced options), in the order `check_choices`
    takes them after Fast."""
    sampler = Dropdown(label="Sampler", choices=SAMPLER_CHOICES, value=DEFAULT_SAMPLER, elem_id=f"{prefix}-sampler",
                       info="DDIM is the original's; eta applies to DDIM only; Fast uses LCM")
    loras = Dropdown(label="LoRA", choices=list(backend.lora_files), value=[n for n, _ in backend.preselected_loras],
                     multiselect=True, elem_id=f"{prefix}-loras",
                     info="files in models/lora/ or given with --lora; merged into the base for this request")
    scale = max((s for _, s in backend.preselected_loras), default=LORA_SCALE.default)
    fast_decode = gr.Checkbox(label="Fast decode (TAESD)", value=False, elem_id=f"{prefix}-fast_decode",
                              info="the tiny autoencoder for the final images too: seconds faster on a CPU, a little softer")
    return [sampler, loras, param_component(replace(LORA_SCALE, default=scale), f"{prefix}-lora_scale"), fast_decode]


def wire_fast(fast: gr.Checkbox, steps: gr.components.Component, scale: gr.components.Component,
              choices: list[gr.components.Component], restored: gr.State, steps_param: Param = STEPS) -> None:
    """Switching Fast sets Steps and Guidance Scale to the preset's values and ranges (or back to `steps_param`
    and the default guidance), the sampler and Fast decode; not when "Restore settings" switched it
    (`restored` holds the value it set): its values stand."""

    def toggle(on: bool, restored_to):
        if restored_to is not None and restored_to == on:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), None
        s, g = (FAST_STEPS, FAST_SCALE) if on else (steps_param, SCALE)
        return (gr.Slider(minimum=s.minimum, maximum=s.maximum, value=s.default),
                gr.Slider(minimum=g.minimum, maximum=g.maximum, value=g.default),
                gr.Dropdown(value=FAST_SAMPLER if on else DEFAULT_SAMPLER, interactive=not on), gr.Checkbox(value=on),
                None)

    sampler, fast_decode = choices[0], choices[-1]
    fast.change(toggle, [fast, restored], [steps, scale, sampler, fast_decode, restored], queue=False,
                api_visibility="private")


def result_line(seed: int, sampler: str, steps: int, fast: bool = False) -> str:
    return f"Seed used: **{seed}** · {sampler_summary(sampler, steps)}" + (" · Fast (LCM-LoRA)" if fast else "")


def guarded_run(cancel: CancelToken, progress: gr.Progress, work: Callable[..., T], runs: RunLog | None = None,
                endpoint: str = "", stopped: threading.Event | None = None) -> T:
    """`work(on_step, on_status)` under the session's Stop button (and `stopped`, set when the client goes
    away) and the page's progress bar, recorded in `runs`; what goes wrong becomes a gr.Error (the user's
    mistakes with their message, anything else logged) and the server keeps serving."""
    runs = runs if runs is not None else RunLog()
    record = runs.start(endpoint)
    outcome = "failed"
    try:
        with cancel.run(stopped) as stopped:

            def on_step(done: int, total: int) -> bool:
                progress((done, total), desc="Sampling", unit="steps")
                runs.step(record, done, total)
                return not stopped.is_set()

            result = work(on_step, lambda text: progress(None, desc=text))
            outcome = "finished"
            return result
    except USER_ERRORS as err:
        outcome = "refused"
        raise user_error(err) from None
    except SamplingCancelled as err:
        outcome = "stopped"
        raise gr.Error(f"Stopped ({err}).", title="Stopped", print_exception=False) from None
    except gr.Error:
        raise
    except Exception as err:  # noqa: BLE001 - the page must keep serving; the log has the traceback
        raise unexpected_error(err) from None
    finally:
        runs.end(record, outcome)
        release_free_memory()


KEEPALIVE_S = 1.0  # a quiet run yields ("tick", None) this often, so that Gradio notices a client that left


class RepeatableProgress:
    """A gr.Progress that can send its last report again. The page clears an event's progress bar at each value
    the event yields (a preview, a keep-alive tick), and Gradio sends a report only when one is made: without
    the repeat, the bar would show for a moment after each step and be gone until the next one."""

    def __init__(self, progress: gr.Progress):
        self.progress = progress
        self.last: tuple[tuple, dict] | None = None

    def __call__(self, *args, **kwargs) -> None:
        self.last = (args, kwargs)
        self.progress(*args, **kwargs)

    def repeat(self) -> None:
        if self.last is not None:
            args, kwargs = self.last
            self.progress(*args, **kwargs)


async def guarded_stream(cancel: CancelToken, progress: gr.Progress, work: Callable[..., T], runs: RunLog | None = None,
                         endpoint: str = "") -> AsyncIterator[tuple[str, Any]]:
    """`guarded_run` for `work(on_step, on_status, on_preview)` in a worker thread, so that the page can show its
    previews while it runs: yields ("preview", (images, done, total)) as they come, ("tick", None) after each
    quiet second, then ("result", result).

    The run belongs to this generator: when Gradio closes it or cancels its task (Stop, gradio_client's
    `job.cancel()`, a closed page: Gradio sees that at the next tick), the sampler stops at its next step and
    Gradio's slot is free for the next request at once."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    stopped = threading.Event()
    progress = RepeatableProgress(progress)

    def put(item: tuple[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, item)
        except RuntimeError:  # the server's loop is gone (shutdown): nobody is waiting
            pass

    def run() -> None:
        try:
            result = guarded_run(cancel, progress, lambda on_step, on_status: work(
                on_step, on_status, lambda *preview: put(("preview", preview))), runs, endpoint, stopped)
            put(("result", result))
        except BaseException as err:  # noqa: BLE001 - handed to the page's task, which raises it
            put(("error", err))

    threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True,
                     name=f"run-{endpoint or 'generate'}").start()
    getter: asyncio.Future | None = None
    try:
        while True:
            getter = getter or asyncio.ensure_future(events.get())
            if not (await asyncio.wait({getter}, timeout=KEEPALIVE_S))[0]:
                yield "tick", None
                progress.repeat()
                continue
            kind, value = getter.result()
            getter = None
            if kind == "error":
                raise value
            yield kind, value
            if kind == "result":
                return
            progress.repeat()  # the page has just cleared the bar for what was yielded
    finally:
        stopped.set()  # closed or cancelled before the result: the run stops at its next step
        if getter is not None:
            getter.cancel()


def preview_update(images: list, done: int, total: int) -> tuple:
    """Gallery, result line and status while sampling: the TAESD previews of the current step."""
    return ([(im, f"preview after step {done} of {total}") for im in images],
            f"Sampling: step {done} of {total} (preview)", gr.skip())


def model_line(spec: AppSpec) -> str:
    """The page's line naming the ControlNet file it uses (from `weights.table`)."""
    weights = WEIGHTS[spec.weights[0]]
    others = " (other weights under *Advanced options*)" if len(spec.weights) > 1 else ""
    return f"Model: `{weights.basename}` from `{weights.repo}` ({weights.label}, downloaded once on first use unless already on disk){others}."


SHOWN = {"map": "detected map", "input": "input image", "hint": "masked input (the hint)"}


def _mask_inputs(spec: AppSpec) -> tuple[CheckedEditor, CheckedImage]:
    """The inpaint input: the image with a brush (eraser, undo) to paint the area to repaint, and an optional
    mask image."""
    editor = CheckedEditor(
        label="Input image: paint the area to repaint", sources=["upload"], type="numpy", image_mode="RGBA",
        brush=gr.Brush(default_size=24, colors=["#ff00ff"], default_color="#ff00ff", color_mode="fixed"),
        eraser=gr.Eraser(default_size=24), layers=False, transforms=(), format="png", elem_id=f"{spec.name}-input",
    )
    gr.Markdown("Upload an image, pick the brush in the toolbar and paint over what should change (eraser and "
                "undo are there too); or upload a mask below (white = repaint).")
    mask = CheckedImage(label="Mask image (optional, white = repaint)", sources=["upload"], type="numpy",
                        image_mode=None, height=200, elem_id=f"{spec.name}-mask")
    return editor, mask


def stream_update(kind: str, value: Any) -> tuple:
    """Gallery, result line and status for a ("preview", …) or ("tick", None) of `guarded_stream`."""
    return preview_update(*value) if kind == "preview" else (gr.skip(), gr.skip(), gr.skip())


def build_app(spec: AppSpec, backend: Backend, status_line) -> None:
    """One generation app (the original apps' layout) inside the current Blocks/Tab context."""
    name = spec.name
    token = gr.State(CancelToken())
    with gr.Row():
        gr.Markdown(f"## Control Stable Diffusion with {spec.title}")
    gr.Markdown("\n\n".join(filter(None, (model_line(spec), spec.notes))), elem_id=f"{name}-about")
    mask = None
    with gr.Row():
        with gr.Column():
            if spec.canvas:
                image = _canvas_input(spec)
            elif spec.paint_mask:
                image, mask = _mask_inputs(spec)
            else:
                image = CheckedImage(label="Input image", sources=["upload"], type="numpy", image_mode=None,
                                     elem_id=f"{name}-input")
            prompt = gr.Textbox(label="Prompt", placeholder=spec.prompt_placeholder or None, elem_id=f"{name}-prompt")
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id=f"{name}-run")
                stop = gr.Button("Stop", variant="stop", elem_id=f"{name}-stop")
            preprocessor = None
            if spec.preprocessor_radio:
                preprocessor = Radio(label="Preprocessor", choices=[p.label for p in spec.preprocessors],
                                     value=spec.preprocessors[0].label, elem_id=f"{name}-preprocessor")
            primary = [param_component(p, f"{name}-{p.name}") for p in spec.primary]
            fast = fast_switch(name)
            with gr.Accordion("Advanced options", open=False, elem_id=f"{name}-advanced"):
                controls = primary + [param_component(p, f"{name}-{p.name}") for p in spec.accordion]
                a_prompt = gr.Textbox(label="Added Prompt", value=spec.a_prompt)
                n_prompt = gr.Textbox(label="Negative Prompt", value=spec.n_prompt)
                weights = Dropdown(label="ControlNet weights", choices=spec.weight_choices(), value=spec.weights[0],
                                   elem_id=f"{name}-weights")
                choices = choice_inputs(backend, name)
        with gr.Column():
            gallery = gr.Gallery(label="Output", show_label=False, elem_id=f"{name}-gallery", columns=2, height="auto",
                                 object_fit="contain", format="png")
            seed_used = gr.Markdown(elem_id=f"{name}-seed-used")
            status = gr.Markdown(status_line(), elem_id=f"{name}-status")
            drop, restore_message, restored = restore_drop(name)

    names = [p.name for p in spec.controls]
    # between the image and the controls: the mask upload (inpaint), the prompt, the Preprocessor radio (1.1)
    leading = {k: c for k, c in (("mask", mask), ("prompt", prompt), ("preprocessor", preprocessor)) if c is not None}

    async def process(cancel: CancelToken, image_value, *args, progress=gr.Progress()):
        show_notes(image_value)
        given = dict(zip(leading, args))
        rest = args[len(leading):]
        values = dict(zip(names, rest[: len(names)]))
        a_value, n_value, weights_value, fast_value, *choice_values = rest[len(names):]
        if spec.paint_mask:
            image_value = MaskedUpload(image_value, given["mask"])

        def work(on_step, on_status, on_preview) -> tuple[AppResult, list[Path]]:
            choices = check_choices(choice_values[0], fast_value, *choice_values[1:], lora_files=backend.lora_files)
            request = validate(spec, values, given["prompt"], a_value, n_value, weights_value, choices,
                               given.get("preprocessor"))
            on_status("Detecting the control map")
            result = run_app(spec, backend, image_value, request, on_step=on_step, on_status=on_status,
                             on_preview=on_preview)
            return result, save_app_results(spec, backend, request, result)

        async with aclosing(guarded_stream(cancel, progress, work, backend.runs, name)) as stream:
            async for kind, value in stream:
                if kind != "result":
                    yield stream_update(kind, value)
                    continue
                result, files = value
                shown = [] if result.display_map is None else [(str(files.pop(0)), SHOWN[result.display_kind])]
                items = shown + [(str(f), f"sample {i + 1}") for i, f in enumerate(files)]
                yield items, result_line(result.seed, result.sampler, result.steps, result.fast), status_line()

    process = zero_gpu(process, app_duration(names, len(leading)))
    steps = next(p for p in spec.controls if p.name == STEPS.name)
    wire_fast(fast, controls[names.index(STEPS.name)], controls[names.index(SCALE.name)], choices, restored, steps)
    inputs = [token, image, *leading.values(), *controls, a_prompt, n_prompt, weights, fast, *choices]
    wire_restore(drop, restore_message, restored, fast, inputs[2:], app_restorer(spec, backend))
    outputs = [gallery, seed_used, status]
    clicked = run.click(process, inputs, outputs, api_name=name, **GENERATE_SLOT)
    submitted = prompt.submit(process, inputs, outputs, api_visibility="private", **GENERATE_SLOT)
    stop.click(CancelToken.stop, [token], None, cancels=[clicked, submitted], queue=False,
               api_visibility="private")


# ---- annotator page -------------------------------------------------------------------------------------------


def build_annotator_page(sections: Sequence, backend: Backend) -> None:
    """The annotator page: one block per detector group: upload, its parameters, a resolution, Run, a gallery."""
    gr.Markdown("## Annotators")
    for section in sections:
        with gr.Row():
            gr.Markdown(f"## {section.title}")
        with gr.Row():
            with gr.Column():
                image = CheckedImage(label="Input image", sources=["upload"], type="numpy", image_mode=None,
                                     elem_id=f"annotate-{section.name}-input")
                controls = [param_component(p, f"annotate-{section.name}-{p.name}") for p in section.controls]
                run = gr.Button("Run", variant="primary", elem_id=f"annotate-{section.name}-run")
            with gr.Column():
                gallery = gr.Gallery(label="Generated images", show_label=False, height="auto", format="png",
                                     elem_id=f"annotate-{section.name}-gallery")
        run.click(_annotate_fn(section, backend), [image, *controls], gallery, api_name=f"annotate_{section.name}",
                  **ANNOTATE_SLOT)


def _annotate_fn(section, backend: Backend):
    def annotate(image_value, *values):
        show_notes(image_value)
        try:
            if image_value is None:
                raise InvalidInput("No input image: upload an image first.")
            checked = {p.name: check_param(p, v) for p, v in zip(section.controls, values)}
            image = resize_image(check_image(image_value), checked.pop("resolution"))
            maps = []
            for detector in section.detectors:
                accepted = {p.name for p in REGISTRY[detector].params}
                params = {**{k: v for k, v in section.fixed.items() if k in accepted},
                          **{k: v for k, v in checked.items() if k in accepted}}
                maps.append(backend.detector(detector)(image, **params))
            return maps
        except USER_ERRORS as err:
            raise user_error(err) from None
        except Exception as err:  # noqa: BLE001
            raise unexpected_error(err) from None

    return annotate


# ---- the page ---------------------------------------------------------------------------------------------------


def status_text(backend: Backend) -> str:
    s = backend.model.status()
    reads = ", ".join(f"{k} ×{n}" for k, n in s["control_loads"].items()) or "none yet"
    return (f"Model: {s['base']} · base loads: {s['base_loads']} · active ControlNet: {s['active_control'] or 'none'} · "
            f"ControlNet file reads: {reads} · device {s['device']} ({s['dtype']})")


@dataclass(frozen=True)
class Page:
    """One page (a tab of `--app all`): its name, tab title and how it lays itself out inside the tab; pages of
    one `group` (e.g. "ControlNet 1.1") sit together as the inner tabs of one outer tab."""

    name: str
    title: str
    build: Callable[[Backend, Callable[[], str]], None]  # (backend, status_line), inside the tab
    group: str = ""


def app_page(spec: AppSpec, group: str = "") -> Page:
    return Page(spec.name, spec.title.removesuffix(" Maps"),
                lambda backend, status_line: build_app(spec, backend, status_line), group)


def annotator_page(sections: Sequence[AnnotatorSection]) -> Page:
    return Page("annotators", "Annotators", lambda backend, status_line: build_annotator_page(sections, backend))


def group_id(group: str) -> str:
    """The outer tab's id of a page group: "ControlNet 1.1" -> "group-controlnet-1-1"."""
    return "group-" + "-".join("".join(c if c.isalnum() else " " for c in group.lower()).split())


def build_demo(pages: Sequence[Page], backend: Backend, title: str = "ControlNet demo suite") -> gr.Blocks:
    """One page alone, or several as tabs: the pages of a group as inner tabs of the group's tab."""

    def status_line() -> str:
        return status_text(backend)

    def tab(page: Page) -> None:
        with gr.Tab(page.title, id=page.name, elem_id=f"tab-{page.name}"):
            page.build(backend, status_line)

    with gr.Blocks(title=title, delete_cache=(CACHE_LIFETIME_S, CACHE_LIFETIME_S)) as demo:
        if backend.tiny:
            gr.Markdown(TINY_BANNER, elem_id="tiny-banner")
        if len(pages) == 1:
            pages[0].build(backend, status_line)
        else:
            groups: dict[str, list[Page]] = {}
            for page in pages:
                groups.setdefault(page.group or page.name, []).append(page)
            with gr.Tabs():
                for group, members in groups.items():
                    if not members[0].group:
                        tab(members[0])
                        continue
                    with gr.Tab(group, id=group_id(group), elem_id=f"tab-{group_id(group)}"):
                        with gr.Tabs():
                            for page in members:
                                tab(page)

        if backend.fast_by_default:
            switches = [b for b in demo.blocks.values()
                        if isinstance(b, gr.Checkbox) and str(b.elem_id).endswith(FAST_SWITCH)]
            demo.load(lambda: [True] * len(switches), None, switches, queue=False, api_visibility="private")

        def status() -> dict:
            """The shared model's state (base loads, ControlNet reads per file, the active weights) and the runs
            served (started, finished, stopped, failed; the steps each recent run reached)."""
            return backend.model.status() | backend.runs.status()

        gr.api(status, api_name="status")
    return demo
