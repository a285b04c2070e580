"""The named API endpoints of `launch.py --app all --tiny`, called with gradio_client: every app (1.0 and 1.1)
returns the map and the images with its own weights active; bad values (bypassing the sliders) are refused
with a message naming the control, and the server keeps serving."""
from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from apps.annotators import SECTIONS as ANNOTATOR_SECTIONS
from apps.controls import MAX_PROMPT_CHARS
from apps.registry import APPS
from tests.apps_server import API_SERVER_TESTS, bad_inputs, input_image_path, shared_client, start_server, synthetic_image, write_png

pytestmark = API_SERVER_TESTS

RESOLUTION = 256
INPUT_H, INPUT_W = 256, 320


@pytest.fixture(scope="module")
def client():
    return shared_client("--app", "all")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("api-inputs")
    drawing = np.full((INPUT_H, INPUT_W, 3), 255, np.uint8)
    drawing[100:110, 40:280] = 0
    layer = np.zeros((INPUT_H, INPUT_W, 4), np.uint8)  # a painted stroke: opaque where the mask is
    layer[80:160, 100:220] = (255, 0, 255, 255)
    return {"image": input_image_path(folder, INPUT_H, INPUT_W), "drawing": write_png(folder / "drawing.png", drawing),
            "mask_layer": write_png(folder / "mask_layer.png", layer), **bad_inputs(folder / "bad")}


def app_input(name: str, files: dict[str, Path]):
    if APPS[name].canvas:
        return {"background": None, "layers": [], "composite": handle_file(str(files["drawing"]))}
    if APPS[name].paint_mask:
        return {"background": handle_file(str(files["image"])), "layers": [handle_file(str(files["mask_layer"]))],
                "composite": None}
    return handle_file(str(files["image"]))


def detector_choice(name: str) -> str | None:
    """A 1.1 app's first Preprocessor choice that runs a detector (None: the app has no choice)."""
    return next((p.label for p in APPS[name].preprocessors if p.detector), None) if len(APPS[name].preprocessors) > 1 else None


def app_args(name: str, image, prompt: str = "a test picture", weights: str | None = None,
             preprocessor: str | None = None, mask=None, **values) -> list:
    """Positional API arguments: image, (inpaint: mask image), prompt, (1.1: Preprocessor), every control in page
    order, added/negative prompt, weights."""
    spec = APPS[name]
    defaults = {p.name: p.default for p in spec.controls}
    defaults.update(num_samples=1, image_resolution=RESOLUTION, ddim_steps=1, seed=7)
    if spec.detect_resolution is not None:
        defaults["detect_resolution"] = 128  # the smallest: the random-weight detectors are the slow part
    defaults.update(values)
    leading = ([mask] if spec.paint_mask else []) + [prompt]
    if len(spec.preprocessors) > 1:
        leading.append(preprocessor or spec.preprocessors[0].label)
    return [image, *leading, *(defaults[p.name] for p in spec.controls), spec.a_prompt, spec.n_prompt,
            weights or spec.weights[0]]


def image_sizes(gallery) -> list[tuple[int, int]]:
    sizes = []
    for item in gallery:
        with PIL.Image.open(item["image"]) as im:
            sizes.append((im.height, im.width))
    return sizes


def test_every_endpoint_is_listed(client):
    named = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {f"/{name}" for name in APPS} <= named
    assert {f"/annotate_{s.name}" for s in ANNOTATOR_SECTIONS} <= named
    assert "/status" in named


@pytest.mark.parametrize("name", list(APPS))
def test_app_endpoint(client, files, name):
    args = app_args(name, app_input(name, files), preprocessor=detector_choice(name), num_samples=2)
    gallery, seed_text, status_text = client.predict(*args, api_name=f"/{name}")
    assert image_sizes(gallery) == [(INPUT_H, INPUT_W)] * 3
    assert "Seed used: **7**" in seed_text
    assert "base loads: 1" in status_text
    assert client.predict(api_name="/status")["active_control"] == APPS[name].weights[0]


def test_fast_streams_previews_then_the_result(client, files):
    """Fast over the API (LCM-LoRA, LCM, 4 steps): the endpoint yields a TAESD preview after each of the first
    three steps, each showing a different image, then the map and the sample."""
    args = app_args("depth", app_input("depth", files), ddim_steps=4, scale=1.0, num_samples=1)
    job = client.submit(*args, True, "lcm", [], 1.0, api_name="/depth")
    final = job.result()
    outputs = job.outputs()
    previews = [o for o in outputs if "(preview)" in o[1]]
    assert [o[1] for o in previews] == [f"Sampling: step {k} of 4 (preview)" for k in (1, 2, 3)]
    images = [np.array(PIL.Image.open(p[0][0]["image"])) for p in previews]
    assert images[0].shape == (INPUT_H, INPUT_W, 3)
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    assert "LCM, 4 steps · Fast (LCM-LoRA)" in final[1] and image_sizes(final[0]) == [(INPUT_H, INPUT_W)] * 2


def test_same_seed_same_images(client, files):
    first, _, _ = client.predict(*app_args("canny", app_input("canny", files), seed=123), api_name="/canny")
    second, _, _ = client.predict(*app_args("canny", app_input("canny", files), seed=123), api_name="/canny")
    third, _, _ = client.predict(*app_args("canny", app_input("canny", files), seed=124), api_name="/canny")
    pixels = [np.asarray(PIL.Image.open(g[1]["image"])) for g in (first, second, third)]
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


def test_random_seed_is_reported(client, files):
    _, seed_text, _ = client.predict(*app_args("scribble", app_input("scribble", files), seed=-1), api_name="/scribble")
    seed = int(seed_text.split("**")[1])
    assert 0 <= seed <= 65535


def test_weights_variant_and_base_reuse(client, files):
    before = client.predict(api_name="/status")["control_loads"].get("cn11_canny", 0)  # v11_canny may have read it
    client.predict(*app_args("canny", app_input("canny", files), weights="cn11_canny"), api_name="/canny")
    client.predict(*app_args("canny", app_input("canny", files)), api_name="/canny")
    state = client.predict(api_name="/status")
    assert state["base_loads"] == 1
    assert state["control_loads"]["cn11_canny"] in (before, before + 1) and state["control_loads"]["cn11_canny"] >= 1
    assert state["active_control"] == APPS["canny"].weights[0] == "cn10_canny_fp16"


BAD_VALUES = [
    ("num_samples", 13, "Images"),
    ("num_samples", 0, "Images"),
    ("image_resolution", 300, "Image Resolution"),
    ("image_resolution", 1024, "Image Resolution"),
    ("strength", -0.5, "Control Strength"),
    ("strength", 2.5, "Control Strength"),
    ("ddim_steps", 0, "Steps"),
    ("ddim_steps", 101, "Steps"),
    ("ddim_steps", 2.5, "Steps"),
    ("scale", 31, "Guidance Scale"),
    ("seed", -2, "Seed"),
    ("seed", 2**31, "Seed"),
    ("eta", 1.5, "eta"),
    ("guess_mode", "yes", "Guess Mode"),
    ("low_threshold", 0, "Canny low threshold"),
    ("high_threshold", 256, "Canny high threshold"),
]


@pytest.mark.parametrize("control,value,label", BAD_VALUES, ids=[f"{c}={v}" for c, v, _ in BAD_VALUES])
def test_out_of_range_values_are_refused(client, files, control, value, label):
    with pytest.raises(AppError, match=label):
        client.predict(*app_args("canny", app_input("canny", files), **{control: value}), api_name="/canny")


def test_detect_resolution_is_checked(client, files):
    with pytest.raises(AppError, match="HED Resolution"):
        client.predict(*app_args("hed", app_input("hed", files), detect_resolution=64), api_name="/hed")


def test_1_1_values_are_checked(client, files):
    image = handle_file(str(files["image"]))
    with pytest.raises(AppError, match="Preprocessor"):
        client.predict(*app_args("v11_softedge", image, preprocessor="Canny"), api_name="/v11_softedge")
    with pytest.raises(AppError, match="Denoising Strength"):
        client.predict(*app_args("v11_tile", image, denoise=0.05), api_name="/v11_tile")
    with pytest.raises(AppError, match="Mask Blur"):
        client.predict(*app_args("v11_inpaint", app_input("v11_inpaint", files), mask_blur=9), api_name="/v11_inpaint")
    with pytest.raises(AppError, match="No mask"):
        client.predict(*app_args("v11_inpaint", {"background": image, "layers": [], "composite": None}),
                       api_name="/v11_inpaint")
    with pytest.raises(AppError, match="Image Resolution"):
        client.predict(*app_args("v11_canny", image, image_resolution=1024), api_name="/v11_canny")


def test_1_1_special_inputs(client, files, tmp_path):
    image = handle_file(str(files["image"]))
    gallery, _, _ = client.predict(*app_args("v11_shuffle", image, preprocessor="None"), api_name="/v11_shuffle")
    assert len(gallery) == 1  # no map: the upload itself is the control
    mask = np.zeros((INPUT_H, INPUT_W), np.uint8)
    mask[100:150, 50:150] = 255
    editor = {"background": image, "layers": [], "composite": None}
    gallery, _, _ = client.predict(*app_args("v11_inpaint", editor, mask=handle_file(str(write_png(tmp_path / "m.png", mask)))),
                                   api_name="/v11_inpaint")
    hint = np.asarray(PIL.Image.open(gallery[0]["image"]))
    assert image_sizes(gallery) == [(INPUT_H, INPUT_W)] * 2 and (hint[110:140, 60:140] == 0).all()
    gallery, _, _ = client.predict(*app_args("v11_tile", image, image_resolution=1024), api_name="/v11_tile")
    assert image_sizes(gallery) == [(INPUT_H, INPUT_W), (1024, 1280)]  # the input, then an image above 768


def test_text_and_weights_are_checked(client, files):
    with pytest.raises(AppError, match="too long"):
        client.predict(*app_args("canny", app_input("canny", files), prompt="x" * (MAX_PROMPT_CHARS + 1)), api_name="/canny")
    with pytest.raises(AppError, match="ControlNet weights"):
        client.predict(*app_args("canny", app_input("canny", files), weights="cn10_seg"), api_name="/canny")


def test_missing_image_is_refused(client):
    with pytest.raises(AppError, match="No input image"):
        client.predict(*app_args("canny", None), api_name="/canny")
    with pytest.raises(AppError, match="No drawing"):
        client.predict(*app_args("scribble_interactive", None), api_name="/scribble_interactive")


@pytest.mark.parametrize("kind,message", [("corrupt", "Could not read"), ("too large", "at most 4096"), ("16-bit", "only 8-bit")])
def test_bad_uploads_are_refused_and_the_server_keeps_serving(client, files, kind, message):
    with pytest.raises(AppError, match=message):
        client.predict(*app_args("canny", handle_file(str(files[kind]))), api_name="/canny")
    gallery, _, _ = client.predict(*app_args("canny", app_input("canny", files)), api_name="/canny")
    assert len(gallery) == 2


def test_rgba_and_grey_uploads_work(client, tmp_path):
    rgba = np.dstack([synthetic_image(INPUT_H, INPUT_W), np.full((INPUT_H, INPUT_W), 128, np.uint8)])
    PIL.Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    PIL.Image.fromarray(synthetic_image(INPUT_H, INPUT_W)[:, :, 0]).save(tmp_path / "grey.png")
    for name in ("rgba.png", "grey.png"):
        gallery, _, _ = client.predict(*app_args("canny", handle_file(str(tmp_path / name))), api_name="/canny")
        assert image_sizes(gallery) == [(INPUT_H, INPUT_W)] * 2


def test_canvas_endpoint(client, files):
    update = client.predict(320, 256, api_name="/scribble_interactive_canvas")
    assert update["canvas_size"] == [320, 256]
    with PIL.Image.open(update["value"]["background"]) as im:
        assert (im.height, im.width) == (256, 320)
        assert np.asarray(im.convert("RGB")).min() == 255
    with pytest.raises(AppError, match="Canvas Width"):
        client.predict(2000, 256, api_name="/scribble_interactive_canvas")


@pytest.mark.parametrize("section", ANNOTATOR_SECTIONS, ids=[s.name for s in ANNOTATOR_SECTIONS])
def test_annotator_endpoint(client, files, section):
    values = [RESOLUTION if p.name == "resolution" else p.default for p in section.controls]
    maps = client.predict(handle_file(str(files["image"])), *values, api_name=f"/annotate_{section.name}")
    assert image_sizes(maps) == [(INPUT_H, INPUT_W)] * len(section.detectors)


def test_annotator_endpoint_checks_values(client, files):
    with pytest.raises(AppError, match="resolution"):
        client.predict(handle_file(str(files["image"])), 100, 200, 100, api_name="/annotate_canny")


@pytest.fixture(scope="module")
def weightless_server(tmp_path_factory):
    """The real (not tiny) apps with no weight file anywhere and downloads off."""
    empty = tmp_path_factory.mktemp("no-weights")
    server = start_server("--app", "all", "--offline", "--models-dir", str(empty), tiny=False)
    yield server
    server.stop()


def test_missing_weights_are_explained_and_the_server_keeps_serving(weightless_server, files):
    client = Client(weightless_server.url, verbose=False)
    for _ in range(2):  # twice: the failure leaves nothing half-loaded behind
        with pytest.raises(AppError) as err:
            client.predict(*app_args("canny", app_input("canny", files)), api_name="/canny")
        message = str(err.value)
        assert "v1-5-pruned-emaonly.safetensors" in message and "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
        assert "put it in" in message
    with pytest.raises(AppError, match="ControlNetHED.pth"):
        client.predict(*app_args("hed", app_input("hed", files)), api_name="/hed")
    assert client.predict(api_name="/status")["base_loads"] == 0
    assert "TINY" not in urllib.request.urlopen(weightless_server.url, timeout=30).read().decode()


# ---- Stop, without a server: the pipeline callback sees the session's flag ----------------------------------------


def test_stop_cancels_the_running_sampler_and_only_it():
    import threading

    import gradio as gr

    from apps.builder import CancelToken, guarded_run
    from apps.spec import run_app, validate
    from apps.backend import Backend
    from cldm.shared_model import SharedModel

    manager, spec, token = Backend(SharedModel(tiny=True, device="cpu")), APPS["scribble"], CancelToken()
    values = {p.name: p.default for p in spec.controls} | {"image_resolution": 256, "ddim_steps": 100}
    request = validate(spec, values, "x", "", "", None)
    image = synthetic_image(INPUT_H, INPUT_W)
    steps, started, outcome = [], threading.Event(), {}

    def work(on_step, on_status):
        def counting(done, total):
            steps.append(done)
            started.set()
            return on_step(done, total)
        return run_app(spec, manager, image, request, on_step=counting, on_status=on_status)

    def first_run():
        try:
            guarded_run(token, gr.Progress(), work)
        except gr.Error as err:
            outcome["error"] = err.message

    thread = threading.Thread(target=first_run)
    thread.start()
    assert started.wait(120)
    token.stop()
    thread.join(120)
    assert outcome["error"].startswith("Stopped") and len(steps) < 100
    # a run started afterwards is not stopped by the earlier click
    short = validate(spec, values | {"ddim_steps": 2}, "x", "", "", None)
    result = guarded_run(token, gr.Progress(), lambda on_step, on_status: run_app(spec, manager, image, short, on_step))
    assert len(result.samples) == 1


def test_stream_repeats_the_progress_after_each_yield():
    """The page clears the progress bar at every value a streaming event yields (a preview, a keep-alive tick),
    so `guarded_stream` sends the last report again after each: the bar stays up between slow steps."""
    import asyncio
    import time

    from apps.builder import KEEPALIVE_S, CancelToken, guarded_stream

    reports = []

    def progress(*args, **kwargs):
        reports.append((args, kwargs.get("desc")))

    def work(on_step, on_status, on_preview):
        on_step(1, 3)
        time.sleep(2.5 * KEEPALIVE_S)  # a slow step: two quiet seconds, two ticks
        on_preview([np.zeros((8, 8, 3), np.uint8)], 1, 3)
        time.sleep(0.2)
        return "done"

    async def consume():
        kinds = []
        async for kind, _ in guarded_stream(CancelToken(), progress, work):
            kinds.append((kind, len(reports)))
        return kinds

    kinds = asyncio.run(consume())
    step = (((1, 3),), "Sampling")
    assert [k for k, _ in kinds] == ["tick", "tick", "preview", "result"]
    # the step's report, then the same report once after each tick and after the preview
    assert reports == [step] * 4, reports
