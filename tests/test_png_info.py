"""Images that remember: the `parameters` PNG chunk (WebUI format) written for every result, read back to the
same settings for every app (odd prompts included), readable by the WebUI's and sd-webui-controlnet's parsing
rules; restoring a page's values from it; the result files (and --outputs); the CLI's PNGs and --from-png."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import launch
from apps.backend import Backend
from apps.controls import Choices, check_choices
from apps.errors import InvalidInput
from apps.image_settings import (app_info, multi_info, restore_app, restore_multi, save_app_results, weights_key,
                                 weights_name)
from apps.multi_request import check_unit, validate_multi
from apps.png_info import (ControlNetInfo, ImageInfo, LoraInfo, NoSettings, format_parameters, parse_parameters,
                           read_parameters, read_png_info, save_png)
from apps.registry import APPS
from apps.result_files import Result, ResultFiles
from apps.spec import AppResult, validate
from cldm.shared_model import SharedModel
from tests.apps_server import synthetic_image, write_png
from weights.files import WeightFiles
from weights.hashes import file_sha256
from weights.table import WEIGHTS

ODD_PROMPTS = [
    "a house",
    "",
    "commas, colons: and \"quotes\", 'single', back\\slash",
    "line one\nline two\n\nline four",
    "  surrounding spaces  ",
    "x\nNegative prompt: not really the negative prompt",
    "Negative prompt: at the start",
    "Steps: 20, Sampler: DDIM, CFG scale: 9, Seed: 1, Size: 8x8, App: canny",
    "\"quoted whole\"",
    "ünïcödé, 日本語, emoji 🎛️",
    "ends with a newline\n",
]


@pytest.fixture(scope="module")
def backend() -> Backend:
    return Backend(SharedModel(tiny=True, device="cpu"))


def request_for(spec, prompt="a house", a_prompt="best quality", n_prompt="lowres", weights=None, choices=Choices(),
                preprocessor=None, **values):
    controls = {p.name: p.default for p in spec.controls} | {"seed": 42} | values
    return validate(spec, controls, prompt, a_prompt, n_prompt, weights, choices, preprocessor)


def odd_info(prompt: str, a_prompt: str = "best quality, extremely detailed", n_prompt: str = "lowres, bad") -> ImageInfo:
    return ImageInfo(
        app="canny", prompt=prompt, a_prompt=a_prompt, n_prompt=n_prompt, steps=20, sampler="euler_a", scale=7.5,
        seed=2147483647, width=512, height=384, model="v1-5-pruned-emaonly", model_hash="6ce0161689",
        image_resolution=512, eta=0.25, control_mode="guess",
        controlnets=(ControlNetInfo(0, "canny", "control_sd15_canny", "fef5e48e", 0.65, 0.1, 0.9,
                                    {"low_threshold": 100, "high_threshold": 200}),),
        num_samples=3, batch_pos=2, fast=True, fast_decode=True,
        loras=(LoraInfo("style, v2: final.safetensors", 0.8, "0123456789"), LoraInfo("b.pt", 1.25, None)),
    )


# ---- the text format -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ODD_PROMPTS)
def test_odd_prompts_round_trip(prompt):
    for a_prompt, n_prompt in [("best quality, extremely detailed", "lowres, bad"), ("", ""), (prompt, prompt),
                               ("a:\nb", "Negative prompt: n\nNegative prompt: m")]:
        info = odd_info(prompt, a_prompt, n_prompt)
        assert parse_parameters(format_parameters(info)) == info, (prompt, a_prompt, n_prompt)


def test_the_text_is_the_webuis_format():
    info = replace(odd_info("a house"), loras=(), fast=False, fast_decode=False, num_samples=1, batch_pos=0,
                   sampler="ddim", scale=9.0, seed=12345, control_mode="balanced", eta=0.0,
                   controlnets=(ControlNetInfo(0, "canny", "control_sd15_canny", "fef5e48e", 1.0,
                                               params={"low_threshold": 100, "high_threshold": 200}),))
    assert format_parameters(info) == (
        "a house, best quality, extremely detailed\n"
        "Negative prompt: lowres, bad\n"
        "Steps: 20, Sampler: DDIM, CFG scale: 9, Seed: 12345, Size: 512x384, Model hash: 6ce0161689, "
        "Model: v1-5-pruned-emaonly, Eta DDIM: 0, Image resolution: 512, Control mode: Balanced, "
        'ControlNet 0: "Module: canny, Model: control_sd15_canny [fef5e48e], Weight: 1, Guidance Start: 0, '
        'Guidance End: 1, Low Threshold: 100, High Threshold: 200", '
        'Added prompt: "best quality, extremely detailed", App: canny')


# The WebUI's reading (modules/infotext_utils.py: parse_generation_parameters) and sd-webui-controlnet's
# (scripts/infotext.py: parse_unit), restated: other tools must find the usual fields.
WEBUI_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def webui_parse(text: str) -> dict:
    *lines, last = text.strip().split("\n")
    prompt, negative, done = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done, line = True, line[16:].strip()
        if done:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    result = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in WEBUI_PAIR.findall(last):
        result[key] = json.loads(value) if value[:1] == '"' and value[-1:] == '"' else value
    return result


def controlnet_unit_parse(text: str) -> dict:
    return {k: v for item in text.split(",") for k, v in (item.strip().split(": "),)}


def test_other_tools_read_it():
    info = replace(odd_info("a cat, sitting"), n_prompt="blurry, lowres", loras=())
    read = webui_parse(format_parameters(info))
    assert read["Prompt"] == "a cat, sitting, best quality, extremely detailed"  # what the model was conditioned on
    assert read["Negative prompt"] == "blurry, lowres"
    assert (read["Steps"], read["Sampler"], read["CFG scale"], read["Seed"], read["Size"]) == \
           ("20", "Euler a", "7.5", "2147483647", "512x384")
    assert (read["Model"], read["Model hash"], read["Batch size"], read["Batch pos"]) == \
           ("v1-5-pruned-emaonly", "6ce0161689", "3", "2")
    unit = controlnet_unit_parse(read["ControlNet 0"])
    assert unit == {"Module": "canny", "Model": "control_sd15_canny [fef5e48e]", "Weight": "0.65",
                    "Guidance Start": "0.1", "Guidance End": "0.9", "Low Threshold": "100", "High Threshold": "200"}


def test_text_from_elsewhere_is_refused_clearly():
    webui = "a cat\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
    with pytest.raises(NoSettings, match="not written by this suite"):
        parse_parameters(webui)
    with pytest.raises(NoSettings, match="could not be read"):
        parse_parameters("x\nSteps: many, Sampler: DDIM, CFG scale: 9, Seed: 1, Size: 8x8, App: canny")


# ---- PNG files -------------------------------------------------------------------------------------------------


def test_png_chunk_round_trip_and_non_latin1_text(tmp_path):
    image = synthetic_image(64, 96)
    for prompt in ("plain", "日本語 and emoji 🎛️"):
        info = odd_info(prompt)
        path = save_png(image, tmp_path / "x.png", info)
        with PIL.Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB" and np.array_equal(np.asarray(im), image)
            assert im.text["parameters"] == format_parameters(info)
        assert read_png_info(path) == info


def test_pngs_without_settings_are_refused_clearly(tmp_path):
    plain = write_png(tmp_path / "plain.png", synthetic_image(32, 32))
    with pytest.raises(NoSettings, match="carries no settings"):
        read_parameters(plain)
    jpeg = tmp_path / "photo.jpg"
    PIL.Image.fromarray(synthetic_image(32, 32)).save(jpeg)
    with pytest.raises(NoSettings, match="carries no settings"):
        read_parameters(jpeg)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(NoSettings, match="not a readable PNG"):
        read_parameters(junk)


# ---- every app: a run's settings -> PNG -> the same settings -> the same request ------------------------------------


@pytest.mark.parametrize("name", list(APPS))
def test_every_app_round_trips(name, backend, tmp_path):
    spec = APPS[name]
    extras = {p.name: (not p.default if p.kind is bool else p.maximum if p.maximum is not None else p.default)
              for p in spec.primary + spec.extras}  # the app's own controls (1.1: Denoising Strength, Mask Blur too)
    preprocessor = spec.preprocessors[-1].label if spec.preprocessors else None  # not the default: it round-trips
    request = request_for(spec, prompt=ODD_PROMPTS[2] + "\n" + ODD_PROMPTS[5], a_prompt="a, b: c", n_prompt="n\nm",
                          weights=spec.weights[-1], num_samples=2, image_resolution=320, strength=1.3, guess_mode=True,
                          ddim_steps=7, scale=4.5, eta=0.5, choices=check_choices("dpmpp_2m_karras"),
                          preprocessor=preprocessor, **extras)
    info = app_info(spec, backend, request, seed=1234, size=(320, 384))
    assert (info.app, info.model, info.model_hash, info.seed, info.width, info.height) == \
           (name, "sd15", None, 1234, 384, 320)
    assert info.controlnets[0].model == spec.weights[-1] and info.controlnets[0].params == extras
    path = save_png(synthetic_image(64, 64), tmp_path / f"{name}.png", info)
    read = read_png_info(path)
    assert read == info
    restored = restore_app(spec, read, backend.lora_files)
    assert restored.request == replace(request, values={**request.values, "seed": 1234}) and not restored.notes


def test_fast_and_loras_round_trip(backend, tmp_path):
    spec = APPS["canny"]
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"pretend lora")
    files = {"style.safetensors": lora}
    choices = check_choices(None, True, ["style.safetensors"], 0.7, True, lora_files=files)
    request = request_for(spec, choices=choices, ddim_steps=6, scale=1.5)
    info = app_info(spec, backend, request, seed=9, size=(512, 512))
    assert info.fast and info.fast_decode and info.sampler == "lcm"
    assert info.loras == (LoraInfo("style.safetensors", 0.7, hashlib.sha256(b"pretend lora").hexdigest()[:10]),)
    read = parse_parameters(format_parameters(info))
    assert restore_app(spec, read, files).request == replace(request, values={**request.values, "seed": 9})
    missing = restore_app(spec, read, {})
    assert missing.request.choices.loras == () and missing.request.choices.fast
    assert missing.notes == ("LoRA style.safetensors is not available here and was left out",)


def multi_request(units=((1, "canny", "cn11_canny", 0.8, 0.0, 0.6), (3, "none", "cn10_depth", 1.2, 0.3, 1.0))):
    image = synthetic_image(64, 64)
    checked = [check_unit(n, image, a, w, s, st, e) for n, a, w, s, st, e in units]
    values = {"num_samples": 2, "image_resolution": 256, "ddim_steps": 3, "scale": 6.0, "seed": 5, "eta": 0.1}
    return validate_multi(checked, values, "two things, together", "", "bad", "cfg_resolution_weighting",
                          check_choices("unipc"))


def test_multi_round_trips(backend):
    request = multi_request()
    info = multi_info(backend, request, seed=5, size=(256, 256))
    assert [(u.unit, u.module, u.model) for u in info.controlnets] == [(0, "canny", "cn11_canny"), (2, "none", "cn10_depth")]
    read = parse_parameters(format_parameters(info))
    assert read == info
    restored = restore_multi(read, {})
    assert {n: (u.annotator, u.weights, u.strength, u.start, u.end) for n, u in restored.units.items()} == \
           {1: ("canny", "cn11_canny", 0.8, 0.0, 0.6), 3: ("none", "cn10_depth", 1.2, 0.3, 1.0)}
    assert (restored.values, restored.prompt, restored.a_prompt, restored.n_prompt, restored.mode, restored.choices) == \
           (request.values, request.prompt, request.a_prompt, request.n_prompt, request.mode.value, request.choices)


def test_restoring_refuses_what_does_not_fit(backend):
    info = app_info(APPS["hed"], backend, request_for(APPS["hed"]), 1, (512, 512))
    with pytest.raises(InvalidInput, match=r"made with the HED Maps page \(hed\), not Canny Edge Maps"):
        restore_app(APPS["canny"], info, {})
    with pytest.raises(InvalidInput, match="made with the HED Maps page"):
        restore_multi(info, {})
    foreign = replace(info, controlnets=(replace(info.controlnets[0], model="some_other_controlnet"),))
    with pytest.raises(InvalidInput, match="the ControlNet some_other_controlnet is not one offered here"):
        restore_app(APPS["hed"], foreign, {})
    with pytest.raises(InvalidInput, match="Steps: 500 is outside"):
        restore_app(APPS["hed"], replace(info, steps=500), {})
    multi = multi_info(backend, multi_request(), 5, (256, 256))
    with pytest.raises(InvalidInput, match="Multi-ControlNet page"):
        restore_app(APPS["canny"], multi, {})


def test_model_names_and_hashes_come_from_the_files(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for key in ("sd15", "cn10_canny"):
        (folder / WEIGHTS[key].basename).write_bytes(key.encode() * 1000)
    real = Backend(SharedModel(files=WeightFiles(search_dirs=[folder], offline=True), device="cpu"))
    info = app_info(APPS["canny"], real, request_for(APPS["canny"]), 1, (512, 512))
    sha = {key: hashlib.sha256(key.encode() * 1000).hexdigest() for key in ("sd15", "cn10_canny")}
    assert (info.model, info.model_hash) == ("v1-5-pruned-emaonly", sha["sd15"][:10])
    assert (info.controlnets[0].model, info.controlnets[0].model_hash) == ("control_sd15_canny", sha["cn10_canny"][:8])
    assert weights_key("control_sd15_canny") == "cn10_canny" == weights_key("cn10_canny")
    assert weights_name("cn11_depth") == "control_v11f1p_sd15_depth" and weights_key("nothing") is None


def test_a_hub_cache_blob_is_named_by_its_hash(tmp_path):
    digest = "ab" * 32
    blob = tmp_path / "blobs" / digest
    blob.parent.mkdir()
    blob.write_bytes(b"anything")
    link = tmp_path / "snapshots" / "main" / "model.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    assert file_sha256(link) == digest
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"anything")
    assert file_sha256(plain) == hashlib.sha256(b"anything").hexdigest()


# ---- result files ----------------------------------------------------------------------------------------------


def test_result_files_carry_settings_and_go_to_outputs(backend, tmp_path):
    spec = APPS["canny"]
    request = request_for(spec, num_samples=2)
    result = AppResult(synthetic_image(64, 64), [synthetic_image(64, 64), synthetic_image(64, 64)[::-1].copy()],
                       77, "ddim", 20, False)
    backend = replace(backend, results=ResultFiles(outputs=tmp_path / "out"))
    first = save_app_results(spec, backend, request, result)
    second = save_app_results(spec, backend, request, result)
    assert [p.name for p in first] == ["canny-77-map.png", "canny-77-0.png", "canny-77-1.png"]
    assert [read_png_info(p).batch_pos for p in first] == [0, 0, 1]
    assert all(read_png_info(p) == replace(read_png_info(first[0]), batch_pos=read_png_info(p).batch_pos) for p in first)
    assert np.array_equal(np.asarray(PIL.Image.open(first[2])), result.samples[1])
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert saved == [f"0000{k}-canny-77-{label}.png" for k in (0, 1) for label in ("0", "1", "map")]
    assert (tmp_path / "out" / "00001-canny-77-1.png").read_bytes() == second[2].read_bytes()
    assert first[0].parent != second[0].parent


def test_old_runs_are_removed(tmp_path):
    files = ResultFiles(keep_seconds=0)
    old = files.save("canny", 1, [Result(synthetic_image(8, 8), None, "0")])
    new = files.save("canny", 2, [Result(synthetic_image(8, 8), None, "0")])
    assert not old[0].exists() and new[0].exists()


# ---- the CLI ---------------------------------------------------------------------------------------------------


CLI = ["--tiny", "--image-resolution", "256"]


def test_cli_pngs_carry_settings_and_from_png_makes_them_again(tmp_path, capsys):
    image = write_png(tmp_path / "in" / "photo.png", synthetic_image(256, 320))
    first = tmp_path / "first"
    assert launch.main(["generate", "--app", "mlsd", "--image", str(image), "--out", str(first), "--prompt",
                        "a, b: c\nd", "--n-prompt", "", "--n", "2", "--steps", "2", "--seed", "11", "--scale", "5.5",
                        "--sampler", "euler", "--guess-mode", "--weights", "cn11_mlsd", "--param",
                        "value_threshold=0.3", "--param", "detect_resolution=128", *CLI]) == 0
    made = capsys.readouterr().out.split()
    infos = [read_png_info(p) for p in made]
    assert [i.batch_pos for i in infos] == [0, 0, 1] and infos[0].app == "mlsd"
    assert (infos[1].prompt, infos[1].n_prompt, infos[1].steps, infos[1].sampler, infos[1].scale, infos[1].seed,
            infos[1].control_mode, infos[1].controlnets[0].model) == \
           ("a, b: c\nd", "", 2, "euler", 5.5, 11, "guess", "cn11_mlsd")
    assert infos[1].controlnets[0].params["value_threshold"] == 0.3

    again = tmp_path / "again"
    assert launch.main(["generate", "--from-png", made[1], "--image", str(image), "--out", str(again), "--tiny"]) == 0
    remade = capsys.readouterr().out.split()
    assert [Path(p).name for p in remade] == [Path(p).name for p in made]
    for old, new in zip(made, remade):
        assert PIL.Image.open(old).text == PIL.Image.open(new).text
        assert np.array_equal(np.asarray(PIL.Image.open(old)), np.asarray(PIL.Image.open(new)))

    override = tmp_path / "override"
    assert launch.main(["generate", "--from-png", made[1], "--image", str(image), "--out", str(override), "--tiny",
                        "--steps", "1", "--param", "value_threshold=0.5", "--n", "1"]) == 0
    info = read_png_info(capsys.readouterr().out.split()[1])
    assert (info.steps, info.controlnets[0].params["value_threshold"], info.num_samples) == (1, 0.5, 1)
    assert replace(info, steps=2, num_samples=2, controlnets=infos[1].controlnets) == infos[1]


def test_cli_from_png_errors(tmp_path, capsys, backend):
    image = write_png(tmp_path / "photo.png", synthetic_image(64, 64))
    plain = write_png(tmp_path / "plain.png", synthetic_image(64, 64))
    hed = save_png(image=synthetic_image(64, 64), path=tmp_path / "hed.png",
                   info=app_info(APPS["hed"], backend, request_for(APPS["hed"]), 1, (64, 64)))
    multi = save_png(synthetic_image(64, 64), tmp_path / "multi.png", multi_info(backend, multi_request(), 5, (64, 64)))
    cases = [([plain], "carries no settings"), ([hed, "--app", "canny"], "made with the hed app, not canny"),
             ([multi], "made with the multi page")]
    for args, message in cases:
        code = launch.main(["generate", "--from-png", *map(str, args), "--image", str(image), "--out",
                            str(tmp_path / "o"), "--tiny"])
        assert code == 2 and message in capsys.readouterr().err
    assert launch.main(["generate", "--app", "canny", "--image", str(image), "--out", str(tmp_path / "o")]) == 2
    assert "--prompt is required" in capsys.readouterr().err
