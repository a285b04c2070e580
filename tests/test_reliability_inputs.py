"""The bad-input corpus over the API of every page of `launch.py --app all --tiny` (gradio_client, plus raw HTTP
for what gradio_client cannot send: NaN and ±infinity): broken and odd image files, values of every control out
of range or of the wrong type, unknown sampler/weights/annotator names, hostile text, malformed multi units.

Each refused case must get one sentence a person can act on (the regular expression it names, no traceback,
no generic error), the accepted ones (converted images, harmless Unicode, −0) must run, and the server keeps
serving: a normal request works after the corpus and its log shows no unexpected error.
"""
from __future__ import annotations

import functools
import json
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from apps.annotators import SECTIONS
from apps.controls import A_PROMPT, MAX_PROMPT_CHARS, N_PROMPT
from apps.multi_request import COMMON
from apps.registry import APPS
from tests.apps_server import API_SERVER_TESTS, shared_client, shared_server
from tests.input_corpus import CorpusFile, build_corpus, picture
from tests.test_apps_api import image_sizes

pytestmark = API_SERVER_TESTS

RESOLUTION = 256
UPLOAD_APPS = [name for name, spec in APPS.items() if not spec.canvas]
CANVAS_APPS = [name for name, spec in APPS.items() if spec.canvas]
IMAGE_ENDPOINTS = UPLOAD_APPS + ["multi", "annotate_canny", "annotate_midas"]


@pytest.fixture(scope="module")
def server():
    return shared_server("--app", "all")


@pytest.fixture(scope="module")
def client(server):
    return shared_client("--app", "all")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, CorpusFile]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.png"
    PIL.Image.fromarray(picture()).save(path)
    return path


@pytest.fixture(scope="module")
def log_start(server) -> int:
    """Where the server's log stood when the corpus began (the last test reads what came after)."""
    return len(server.log.read_bytes())


# ---- arguments --------------------------------------------------------------------------------------------------


def app_values(name: str, **values) -> dict[str, Any]:
    spec = APPS[name]
    out = {p.name: p.default for p in spec.controls}
    out.update(num_samples=1, image_resolution=RESOLUTION, ddim_steps=1, seed=7)
    if spec.detect_resolution is not None:
        out["detect_resolution"] = 128
    out.update(values)
    return out


def app_call(name: str, image, prompt: Any = "a test picture", weights: Any = None, sampler: Any = "ddim",
             a_prompt: Any = A_PROMPT, n_prompt: Any = N_PROMPT, **values) -> tuple[list, str]:
    """Positional arguments of /<name>: image, prompt, the controls, prompts, weights, Fast, sampler, LoRAs,
    LoRA scale, Fast decode."""
    spec = APPS[name]
    merged = app_values(name, **values)
    if spec.canvas and image is not None and "composite" not in image:
        image = {"background": None, "layers": [], "composite": image}
    leading = [prompt]
    if spec.paint_mask:  # inpaint: the file under test is the mask upload, beside a good picture to paint on
        good = good_file()
        editor = None if image is None else {"background": good, "layers": [], "composite": good}
        image, leading = editor, [image, prompt]
    if spec.preprocessor_radio:
        leading.append(values.get("preprocessor", spec.preprocessors[0].label))
    args = [image, *leading, *(merged[p.name] for p in spec.controls), a_prompt, n_prompt,
            spec.weights[0] if weights is None else weights, False, sampler, [], 1.0, False]
    return args, f"/{name}"


@functools.cache
def good_file():
    """The good picture as an upload, for calls that need one beside the file under test."""
    path = Path(tempfile.mkdtemp()) / "good.png"
    PIL.Image.fromarray(picture()).save(path)
    return handle_file(str(path))


MULTI_UNIT = {"annotator": "canny", "weights": "cn10_canny"}


def multi_call(units: Any, images: Any, prompt: Any = "a test picture", mode: Any = "balanced", **values) -> tuple[list, str]:
    common = {p.name: p.default for p in COMMON}
    common.update({"num_samples": 1, "image_resolution": RESOLUTION, "ddim_steps": 1, "seed": 7, **values})
    return [units, images, prompt, *(common[p.name] for p in COMMON), A_PROMPT, N_PROMPT, mode], "/multi"


def annotate_call(section: str, image, **values) -> tuple[list, str]:
    spec = next(s for s in SECTIONS if s.name == section)
    merged = {p.name: p.default for p in spec.controls} | {"resolution": RESOLUTION} | values
    return [image, *(merged[p.name] for p in spec.controls)], f"/annotate_{section}"


def image_call(endpoint: str, image) -> tuple[list, str]:
    if endpoint == "multi":
        return multi_call([MULTI_UNIT], [image])
    if endpoint.startswith("annotate_"):
        return annotate_call(endpoint.removeprefix("annotate_"), image)
    return app_call(endpoint, image)


# ---- the checks --------------------------------------------------------------------------------------------------


def assert_one_sentence(message: str, pattern: str) -> None:
    assert re.search(pattern, message), f"{message!r} does not match {pattern!r}"
    assert "\n" not in message and len(message) < 300, message
    for generic in ("Traceback", "Internal error", "error occurred", "upstream Gradio app", "Error raised"):
        assert generic not in message, message


def refused(client, call: tuple[list, str], pattern: str) -> None:
    args, api_name = call
    with pytest.raises(AppError) as err:
        client.predict(*args, api_name=api_name)
    assert_one_sentence(err.value.message, pattern)


# ---- images ------------------------------------------------------------------------------------------------------

REFUSED_FILES = ["empty.png", "truncated.png", "truncated.jpg", "header_only.png", "text.png", "page.jpg", "json.png",
                 "random.png", "drawing.svg", "svg_named.png", "one_pixel.png", "tiny_8x8.png", "sixteen_bit.png",
                 "sixteen_bit.tiff", "float.tiff", "int32.tiff", "bomb_declared.png", "bomb_8000.png", "too_wide.png",
                 "too_tall.jpg", "thin.png"]
SMALL_FILES = {"one_pixel.png", "tiny_8x8.png", "thin.png"}
PAINT_MASK_APPS = {name for name, spec in APPS.items() if spec.paint_mask}
ACCEPTED_FILES = ["rgba.png", "grey.png", "grey_alpha.png", "one_bit.png", "palette.png", "palette_transparent.png",
                  "cmyk.jpg", "exif_rotated.jpg", "animated.gif", "animated.webp", "animated.png", "jpeg_named.png",
                  "picture.bmp", "picture.tiff", "small_16.png"]


@pytest.mark.parametrize("endpoint", IMAGE_ENDPOINTS)
@pytest.mark.parametrize("file", REFUSED_FILES)
def test_bad_image_is_refused(client, corpus, log_start, endpoint, file):
    if endpoint in PAINT_MASK_APPS and file in SMALL_FILES:
        pytest.skip("a mask of any size is stretched to the picture; only the picture has a minimum size")
    item = corpus[file]
    assert not item.accepted
    pattern = item.message
    if endpoint == "multi":
        pattern = "Unit 1: .*" + pattern
    refused(client, image_call(endpoint, handle_file(str(item.path))), pattern)


CANVAS_FILES = {"empty.png": "Could not read the drawing", "text.png": "Could not read the drawing",
                "truncated.png": "Could not read the drawing", "bomb_declared.png": "larger than 4096 px",
                "bomb_8000.png": "larger than 4096 px", "too_wide.png": "larger than 4096 px",
                "one_pixel.png": "at least 16 px"}


@pytest.mark.parametrize("file", list(CANVAS_FILES))
def test_bad_drawing_is_refused(client, corpus, file):
    refused(client, app_call(CANVAS_APPS[0], handle_file(str(corpus[file].path))), CANVAS_FILES[file])


@pytest.mark.parametrize("file", REFUSED_FILES)
def test_bad_picture_to_paint_on_is_refused(client, corpus, file):
    """The inpaint editor's picture (its background and composite) is checked as any upload is."""
    args, api_name = app_call(sorted(PAINT_MASK_APPS)[0], None)
    bad = handle_file(str(corpus[file].path))
    args[0], args[1] = {"background": bad, "layers": [], "composite": bad}, good_file()  # the mask: a good picture
    refused(client, (args, api_name), corpus[file].message)


def run_with_notes(client, call: tuple[list, str]):
    args, api_name = call
    job = client.submit(*args, api_name=api_name)
    result = job.result()
    notes = []
    while not job.communicator.updates.empty():
        update = job.communicator.updates.get_nowait()
        if getattr(update, "log", None):
            notes.append(update.log[0])
    return result, notes


@pytest.mark.parametrize("file", ACCEPTED_FILES)
def test_odd_image_is_converted(client, corpus, file):
    item = corpus[file]
    (gallery, seed_text, _), notes = run_with_notes(client, app_call("canny", handle_file(str(item.path))))
    assert image_sizes(gallery) == [item.size] * 2
    assert "Seed used: **7**" in seed_text
    assert notes == ([item.note] if item.note else [])


@pytest.mark.parametrize("endpoint,file", [("annotate_canny", "animated.gif"), ("annotate_canny", "exif_rotated.jpg"),
                                           ("multi", "cmyk.jpg"), ("multi", "palette_transparent.png")])
def test_odd_image_is_converted_elsewhere(client, corpus, endpoint, file):
    item = corpus[file]
    result, notes = run_with_notes(client, image_call(endpoint, handle_file(str(item.path))))
    gallery = result if endpoint.startswith("annotate_") else result[0]
    assert set(image_sizes(gallery)) == {item.size}
    if endpoint.startswith("annotate_"):
        assert notes == ([item.note] if item.note else [])


@pytest.mark.parametrize("endpoint", IMAGE_ENDPOINTS + CANVAS_APPS)
def test_missing_image_is_refused(client, endpoint):
    if endpoint == "multi":
        refused(client, multi_call([], []), "No input image: upload an image for at least one unit")
    elif endpoint in CANVAS_APPS:
        refused(client, app_call(endpoint, None), "No drawing: open the canvas and draw something first")
    else:
        refused(client, image_call(endpoint, None), "No input image: upload an image first")


def test_an_upload_over_the_size_limit_is_refused(client, server, good, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(good.read_bytes() + b"\0" * (50 * 2**20))  # a readable PNG, 50 MB of padding after it
    with pytest.raises(ValueError, match="exceeds the maximum file size of 52428800 bytes"):  # gradio_client checks first
        client.predict(*app_call("canny", handle_file(str(big)))[0], api_name="/canny")
    boundary = "corpus-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + big.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{server.url}gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as err:  # and the server refuses it from any other client
        urllib.request.urlopen(request, timeout=120)
    assert err.value.code == 413 and "maximum allowed size of 52428800 bytes" in err.value.read().decode()


# ---- values ------------------------------------------------------------------------------------------------------


def out_of_range_cases() -> list[tuple[str, str, Any, str]]:
    """(app, control, value, message) for every control of every app: below and above its range (a checkbox:
    a string and a number)."""
    cases = []
    for name, spec in APPS.items():
        for p in spec.controls:
            label = re.escape(p.label)
            if p.kind is bool:
                cases += [(name, p.name, "yes", f"{label}: expected true/false, got 'yes'"),
                          (name, p.name, 3, f"{label}: expected true/false, got 3")]
                continue
            step = p.step or 0.5
            for value in (p.minimum - step, p.maximum + step):
                value = p.kind(value) if p.kind is int else round(value, 4)
                cases.append((name, p.name, value, f"{label}: {value}.* is outside the allowed range"))
    return cases


@pytest.mark.parametrize("name,control,value,message", out_of_range_cases(),
                         ids=[f"{n}-{c}={v}" for n, c, v, _ in out_of_range_cases()])
def test_out_of_range_value_is_refused(client, good, name, control, value, message):
    image = handle_file(str(good))
    refused(client, app_call(name, image, **{control: value}), message)


WRONG_TYPES = [("abc", "expected a number, got 'abc'"), ("", "expected a number, got ''"),
               (True, "expected a number, got True"), (False, "expected a number, got False"),
               ([1], r"expected a number, got \[1\]"), ({"value": 1}, "expected a number, got \\{'value': 1\\}"),
               (None, "a value is required"), (10**40, "outside the allowed range"), (-(10**40), "outside the allowed range"),
               ("1e999", "expected a finite number"), ("nan", "expected a finite number"), (2**64, "outside the allowed range")]
TYPED_CONTROLS = [("num_samples", "Images"), ("strength", "Control Strength"), ("seed", "Seed"), ("eta", "eta"),
                  ("low_threshold", "Canny low threshold")]


@pytest.mark.parametrize("control,label", TYPED_CONTROLS)
@pytest.mark.parametrize("value,message", WRONG_TYPES, ids=[repr(v)[:12] for v, _ in WRONG_TYPES])
def test_wrong_type_is_refused(client, good, control, label, value, message):
    refused(client, app_call("canny", handle_file(str(good)), **{control: value}), f"{re.escape(label)}.*: .*{message}")


@pytest.mark.parametrize("name", list(APPS))
def test_unknown_names_are_refused(client, good, name):
    image = handle_file(str(good))
    other = "cn10_seg" if name != "seg" else "cn10_canny"  # another app's weights are not this app's
    refused(client, app_call(name, image, weights=other), f"ControlNet weights: .*{other}.* not in the list of choices|not offered")
    refused(client, app_call(name, image, weights="cn10_nothing"), "ControlNet weights: .*cn10_nothing")
    refused(client, app_call(name, image, sampler="euler_magic"), "Sampler: .*euler_magic")
    refused(client, app_call(name, image, sampler=["ddim"]), "Sampler: .*ddim")


def test_fast_and_lora_values_are_checked(client, good):
    args, api = app_call("canny", handle_file(str(good)))
    for position, value, message in ((-5, "yes", "Fast: expected true or false"), (-3, ["missing.safetensors"], "LoRA: .*missing"),
                                     (-2, 5.0, "LoRA scale: 5.0 is outside the allowed range"),
                                     (-1, "no", "Fast decode: expected true or false")):
        bad = list(args)
        bad[position] = value
        refused(client, (bad, api), message)


# ---- NaN and ±infinity: gradio_client cannot send them (strict JSON), a raw HTTP client can -------------------


def call_raw(server, api_name: str, body: str) -> tuple[str, str]:
    """POST a JSON text to /gradio_api/call/<api> and read the event stream: (event, data) of the last event."""
    request = urllib.request.Request(f"{server.url}gradio_api/call/{api_name}", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{server.url}gradio_api/call/{api_name}/{event_id}", timeout=120) as r:
        lines = r.read().decode().splitlines()
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return events[-1], data[-1]


def uploaded(server, path: Path) -> dict:
    boundary = "corpus-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{server.url}gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return {"path": json.loads(r.read())[0], "meta": {"_type": "gradio.FileData"}}


NON_FINITE = ["NaN", "Infinity", "-Infinity"]


@pytest.mark.parametrize("control,label", TYPED_CONTROLS)
@pytest.mark.parametrize("token", NON_FINITE)
def test_non_finite_number_is_refused(server, good, control, label, token):
    args, api = app_call("canny", uploaded(server, good), **{control: "__TOKEN__"})
    body = json.dumps({"data": args}).replace('"__TOKEN__"', token)
    event, data = call_raw(server, api.strip("/"), body)
    assert event == "error"
    assert_one_sentence(json.loads(data)["error"], f"{re.escape(label)}.*: (expected a finite number|.*outside the allowed range)")


def test_negative_zero_is_accepted(client, good):
    gallery, seed_text, _ = client.predict(*app_call("canny", handle_file(str(good)), seed=-0.0, strength=-0.0,
                                                     eta=-0.0)[0], api_name="/canny")
    assert "Seed used: **0**" in seed_text and len(gallery) == 2


# ---- text ----------------------------------------------------------------------------------------------------------

BAD_TEXT = [
    ("x" * 100_000, f"100000 characters is too long \\(at most {MAX_PROMPT_CHARS}\\)"),
    ("a cat\x00", r"a NUL byte \(U\+0000\) at position 6"),
    ("\x00" * 10, r"a NUL byte \(U\+0000\) at position 1"),
    ("bell\x07", r"a control character \(U\+0007\)"),
    ("escape \x1b[31mred", r"a control character \(U\+001B\)"),
    ("del\x7f", r"a control character \(U\+007F\)"),
    ("next line\x85", r"a control character \(U\+0085\)"),
    ("abc\u202edcb", r"a bidirectional override \(U\+202E\) at position 4"),
    ("\u2066isolate\u2069", r"a bidirectional override \(U\+2066\)"),
    ("\u202aembedded", r"a bidirectional override \(U\+202A\)"),
]
TEXT_FIELDS = [("prompt", "Prompt"), ("a_prompt", "Added Prompt"), ("n_prompt", "Negative Prompt")]


@pytest.mark.parametrize("field,label", TEXT_FIELDS)
@pytest.mark.parametrize("text,message", BAD_TEXT, ids=[f"text{k}" for k in range(len(BAD_TEXT))])
def test_bad_text_is_refused(client, good, field, label, text, message):
    refused(client, app_call("canny", handle_file(str(good)), **{field: text}), f"{label}: {message}")


@pytest.mark.parametrize("text,message", BAD_TEXT[:3] + BAD_TEXT[7:8], ids=["long", "nul", "nuls", "rtl"])
def test_bad_text_is_refused_on_the_multi_page(client, good, text, message):
    refused(client, multi_call([MULTI_UNIT], [handle_file(str(good))], prompt=text), f"Prompt: {message}")


def test_harmless_unicode_is_accepted(client, good):
    prompt = "a 🐱 cat, 日本の家, בית ליד הים, منزل\tnear the sea\nby night (é, ß, ﬁ)"
    gallery, seed_text, _ = client.predict(*app_call("canny", handle_file(str(good)), prompt=prompt,
                                                     n_prompt="  ", a_prompt=12345)[0], api_name="/canny")
    assert len(gallery) == 2 and "Seed used: **7**" in seed_text


# ---- the multi page ---------------------------------------------------------------------------------------------


@dataclass
class MultiCase:
    name: str
    units: Any
    images: int | None  # how many good images to send (None: no file list)
    message: str
    values: dict = field(default_factory=dict)


MULTI_CASES = [
    MultiCase("json-truncated", '[{"annotator": "canny"', 1, r"units: not valid JSON"),
    MultiCase("json-garbage", "not json at all", 1, r"units: not valid JSON"),
    MultiCase("json-object", {"annotator": "canny"}, 1, r"units: expected a JSON list of objects"),
    MultiCase("json-numbers", [1, 2], 2, r"units: expected a JSON list of objects"),
    MultiCase("json-string-list", '["canny"]', 1, r"units: expected a JSON list of objects"),
    MultiCase("json-null", None, 1, r"units: expected a JSON list of objects|No input image"),
    MultiCase("too-many", [MULTI_UNIT] * 4, 4, r"At most 3 units, got 4"),
    MultiCase("missing-images", [MULTI_UNIT, MULTI_UNIT], 1, r"2 unit\(s\) but 1 image file\(s\)"),
    MultiCase("no-images", [MULTI_UNIT], None, r"1 unit\(s\) but 0 image file\(s\)"),
    MultiCase("extra-images", [MULTI_UNIT], 2, r"1 unit\(s\) but 2 image file\(s\)"),
    MultiCase("unknown-annotator", [{"annotator": "sobel"}], 1, r"Unit 1: unknown annotator 'sobel'"),
    MultiCase("annotator-number", [{"annotator": 3}], 1, r"Unit 1: unknown annotator 3"),
    MultiCase("annotator-list", [{"annotator": ["canny"]}], 1, r"Unit 1: unknown annotator \['canny'\]"),
    MultiCase("no-annotator", [{"weights": "cn10_canny"}], 1, r"Unit 1: 'annotator' is required"),
    MultiCase("none-without-weights", [{"annotator": "none"}], 1, r"Unit 1: ControlNet weights are required"),
    MultiCase("unknown-weights", [{"annotator": "canny", "weights": "cn10_sobel"}], 1, r"Unit 1: ControlNet weights 'cn10_sobel' are unknown"),
    MultiCase("weights-list", [{"annotator": "canny", "weights": ["cn10_canny"]}], 1, r"Unit 1: ControlNet weights \['cn10_canny'\] are unknown"),
    MultiCase("base-as-weights", [{"annotator": "canny", "weights": "sd15"}], 1, r"Unit 1: ControlNet weights 'sd15' are unknown"),
    MultiCase("strength-high", [{**MULTI_UNIT, "strength": 9}], 1, r"Unit 1: Control Strength: 9.0 is outside"),
    MultiCase("strength-nan-text", [{**MULTI_UNIT, "strength": "nan"}], 1, r"Unit 1: Control Strength: expected a finite number"),
    MultiCase("strength-text", [{**MULTI_UNIT, "strength": "strong"}], 1, r"Unit 1: Control Strength: expected a number"),
    MultiCase("start-after-end", [{**MULTI_UNIT, "start": 0.8, "end": 0.2}], 1, r"Unit 1: End \(0.2\) must be greater than Start \(0.8\)"),
    MultiCase("end-bool", [{**MULTI_UNIT, "end": True}], 1, r"Unit 1: End: expected a number, got True"),
    MultiCase("params-list", [{**MULTI_UNIT, "params": [1]}], 1, r"Unit 1: params must be an object"),
    MultiCase("params-unknown", [{**MULTI_UNIT, "params": {"sharpness": 2}}], 1, r"Unit 1: annotator canny has no setting\(s\) sharpness"),
    MultiCase("params-range", [{**MULTI_UNIT, "params": {"low_threshold": 0}}], 1, r"Unit 1: Canny low threshold: 0 is outside"),
    MultiCase("unknown-key", [{**MULTI_UNIT, "colour": "red"}], 1, r"Unit 1: unknown key\(s\) colour"),
    MultiCase("unknown-mode", [MULTI_UNIT], 1, r"Control mode: .*loud", {"mode": "loud"}),
    MultiCase("steps-high", [MULTI_UNIT], 1, r"Steps: 101 is outside", {"ddim_steps": 101}),
    MultiCase("resolution-text", [MULTI_UNIT], 1, r"Image Resolution: expected a number", {"image_resolution": "big"}),
]


@pytest.mark.parametrize("case", MULTI_CASES, ids=[c.name for c in MULTI_CASES])
def test_bad_multi_request_is_refused(client, good, case):
    images = None if case.images is None else [handle_file(str(good))] * case.images
    refused(client, multi_call(case.units, images, **case.values), case.message)


def test_multi_units_of_other_sizes_are_stretched_to_the_first(client, corpus, good):
    """Units whose images differ in size and aspect ratio are accepted: every map at the first unit's size."""
    other = handle_file(str(corpus["exif_rotated.jpg"].path))  # 256×320 once rotated: another aspect ratio
    units = [MULTI_UNIT, {"annotator": "none", "weights": "cn10_scribble"}]
    gallery, _, _ = run_with_notes(client, multi_call(units, [handle_file(str(good)), other]))[0]
    assert image_sizes(gallery) == [(256, 320)] * 3


# ---- the annotator page ------------------------------------------------------------------------------------------


def annotator_cases() -> list[tuple[str, str, Any, str]]:
    cases = []
    for section in SECTIONS:
        for p in section.controls:
            label = re.escape(p.label)
            if p.kind is bool:
                cases.append((section.name, p.name, "on", f"{label}: expected true/false"))
                continue
            for value in (p.minimum - (p.step or 1), p.maximum + (p.step or 1)):
                value = p.kind(value) if p.kind is int else round(value, 4)
                cases.append((section.name, p.name, value, f"{label}: {value}.* is outside the allowed range"))
            cases.append((section.name, p.name, "many", f"{label}: expected a number"))
    return cases


@pytest.mark.parametrize("section,control,value,message", annotator_cases(),
                         ids=[f"{s}-{c}={v}" for s, c, v, _ in annotator_cases()])
def test_bad_annotator_value_is_refused(client, good, section, control, value, message):
    refused(client, annotate_call(section, handle_file(str(good)), **{control: value}), message)


# ---- and the server keeps serving ---------------------------------------------------------------------------------


def test_the_server_still_serves_and_logged_no_unexpected_error(client, server, good, log_start):
    gallery, seed_text, _ = client.predict(*app_call("hed", handle_file(str(good)), num_samples=2)[0], api_name="/hed")
    assert image_sizes(gallery) == [(256, 320)] * 3 and "Seed used: **7**" in seed_text
    assert client.predict(api_name="/status")["runs_failed"] == 0
    log = server.log.read_bytes()[log_start:].decode(errors="replace")
    assert "Traceback" not in log and "Internal error" not in log, log[-3000:]
