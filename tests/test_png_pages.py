"""Images that remember, on a running server (`launch.py --app all --tiny --outputs DIR`): the gallery hands out
PNGs that carry their settings (fetched over HTTP, as a browser downloads them), --outputs keeps a copy of
each, the detected map is a plain PNG that works as an input with no annotator, and (in headless Chromium)
dropping a PNG on a page restores its controls, while one from another page or without settings only gets a
message."""
from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from gradio_client import Client, handle_file
from playwright.sync_api import expect

from apps.controls import A_PROMPT, N_PROMPT
from apps.multi_request import COMMON
from apps.png_info import parse_parameters
from apps.registry import APPS
from tests.apps_server import BROWSER_SERVER_TESTS, SCREENSHOTS, input_image_path, start_server, write_png
from tests.test_apps_browser import browser, open_advanced, open_app, open_tab  # noqa: F401 (browser: a fixture)
from weights.table import WEIGHTS

pytestmark = BROWSER_SERVER_TESTS

INPUT_H, INPUT_W = 256, 320
CANNY = {"prompt": "a red house, by a lake:\nat dusk", "a_prompt": "sharp", "n_prompt": "blurry, dark",
         "num_samples": 2, "image_resolution": 320, "strength": 1.3, "guess_mode": True, "low_threshold": 50,
         "high_threshold": 150, "ddim_steps": 3, "scale": 4.5, "seed": 4242, "eta": 0.5, "weights": "cn11_canny",
         "fast": False, "sampler": "euler"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def server(outputs):
    srv = start_server("--app", "all", "--outputs", str(outputs))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return input_image_path(tmp_path_factory.mktemp("inputs"), INPUT_H, INPUT_W)


def fetch(item: dict) -> bytes:
    """A gallery item's file as the browser downloads it."""
    with urllib.request.urlopen(item["image"]["url"], timeout=60) as response:
        return response.read()


def canny_args(image: Path, **changes) -> list:
    s = CANNY | changes
    return [handle_file(str(image)), s["prompt"], *(s[p.name] for p in APPS["canny"].controls), s["a_prompt"],
            s["n_prompt"], s["weights"], s["fast"], s["sampler"], [], 1.0, False]


@pytest.fixture(scope="module")
def canny_run(client, image, tmp_path_factory) -> list[Path]:
    """The map and the two samples of one canny run, downloaded over HTTP into files."""
    gallery, _, _ = client.predict(*canny_args(image), api_name="/canny")
    folder = tmp_path_factory.mktemp("downloads")
    paths = []
    for item in gallery:
        paths.append(folder / item["image"]["orig_name"])
        paths[-1].write_bytes(fetch(item))
    return paths


def parameters(path: Path) -> str:
    with PIL.Image.open(path) as im:
        return im.text["parameters"]


def test_gallery_downloads_carry_their_settings(canny_run, outputs):
    names = [p.name for p in canny_run]
    assert names == ["canny-4242-map.png", "canny-4242-0.png", "canny-4242-1.png"]
    infos = [parse_parameters(parameters(p)) for p in canny_run]
    info = infos[1]
    assert (info.app, info.prompt, info.a_prompt, info.n_prompt, info.steps, info.sampler, info.scale, info.seed,
            info.eta, info.image_resolution, info.num_samples, info.control_mode) == \
           ("canny", CANNY["prompt"], "sharp", "blurry, dark", 3, "euler", 4.5, 4242, 0.5, 320, 2, "guess")
    assert (info.width, info.height) == (384, 320)
    unit = info.controlnets[0]
    assert (unit.module, unit.model, unit.weight, unit.params) == \
           ("canny", "cn11_canny", 1.3, {"low_threshold": 50, "high_threshold": 150})
    assert [i.batch_pos for i in infos] == [0, 0, 1]
    assert parameters(canny_run[1]).startswith("a red house, by a lake:\nat dusk, sharp\nNegative prompt: blurry, dark\n")
    saved = sorted(p.name for p in outputs.iterdir() if "canny-4242" in p.name)
    assert [name[6:] for name in saved] == sorted(names)
    for path in canny_run:  # the --outputs copy is the very file the gallery handed out
        copy = next(p for p in outputs.iterdir() if p.name.endswith(path.name))
        assert copy.read_bytes() == path.read_bytes()


def test_the_map_is_a_plain_png_that_works_as_an_input_with_no_annotator(client, canny_run):
    with PIL.Image.open(canny_run[0]) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (384, 320))
    units = [{"annotator": "none", "weights": "cn10_canny"}]
    common = {p.name: p.default for p in COMMON} | {"num_samples": 1, "image_resolution": 320, "ddim_steps": 1, "seed": 3}
    gallery, _, _ = client.predict(units, [handle_file(str(canny_run[0]))], "again", *(common[p.name] for p in COMMON),
                                   A_PROMPT, N_PROMPT, "balanced", api_name="/multi")
    shown = np.asarray(PIL.Image.open(io.BytesIO(fetch(gallery[0]))))
    assert np.array_equal(shown, np.asarray(PIL.Image.open(canny_run[0])))  # the map went in as it is
    info = parse_parameters(PIL.Image.open(io.BytesIO(fetch(gallery[1]))).text["parameters"])
    assert (info.app, info.controlnets[0].module, info.controlnets[0].model) == ("multi", "none", "cn10_canny")


# ---- restoring in the browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(browser, server):
    pg = open_app(browser, server.url)
    yield pg
    pg.close()


def drop(page, name: str, png: Path) -> None:
    page.set_input_files(f"#{name}-restore input[type=file]", str(png))


def number(page, elem_id: str):
    return expect(page.locator(f"#{elem_id} input[type=number]"))


@pytest.mark.browser
def test_dropping_a_png_restores_the_page(page, client, image, canny_run, tmp_path):
    name = "canny"
    open_tab(page, name)
    drop(page, name, canny_run[2])
    expect(page.locator(f"#{name}-restore-message")).to_contain_text(
        "Restored the settings of a Canny Edge Maps image: seed 4242, Euler, 3 steps, 384×320.")
    open_advanced(page, name)
    expect(page.locator(f"#{name}-prompt textarea")).to_have_value(CANNY["prompt"])
    advanced = page.locator(f"#{name}-advanced")
    expect(advanced.get_by_label("Added Prompt")).to_have_value("sharp")
    expect(advanced.get_by_label("Negative Prompt")).to_have_value("blurry, dark")
    for control, value in [("num_samples", "2"), ("image_resolution", "320"), ("strength", "1.3"), ("ddim_steps", "3"),
                           ("scale", "4.5"), ("seed", "4242"), ("low_threshold", "50"), ("high_threshold", "150"),
                           ("eta", "0.5")]:
        number(page, f"{name}-{control}").to_have_value(value)
    expect(page.locator(f"#{name}-guess_mode input[type=checkbox]")).to_be_checked()
    expect(page.locator(f"#{name}-weights input")).to_have_value(WEIGHTS["cn11_canny"].label)
    expect(page.locator(f"#{name}-sampler input")).to_have_value("Euler")
    expect(page.locator(f"#{name}-fast input[type=checkbox]")).not_to_be_checked()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "restore_canny.png"), full_page=True)

    # A Fast PNG switches Fast on and keeps its own steps and guidance (not the preset's 4 and 1) ...
    gallery, _, _ = client.predict(*canny_args(image, fast=True, ddim_steps=3, scale=1.5, num_samples=1, seed=77),
                                   api_name="/canny")
    fast_png = tmp_path / "fast.png"
    fast_png.write_bytes(fetch(gallery[1]))
    drop(page, name, fast_png)
    expect(page.locator(f"#{name}-restore-message")).to_contain_text("seed 77, LCM, 3 steps")
    expect(page.locator(f"#{name}-fast input[type=checkbox]")).to_be_checked()
    page.wait_for_timeout(1000)  # the switch's own handler has run by now
    number(page, f"{name}-ddim_steps").to_have_value("3")
    number(page, f"{name}-scale").to_have_value("1.5")
    expect(page.locator(f"#{name}-sampler input")).to_have_value("LCM")
    # ... and back: Fast off with the PNG's 3 steps and guidance 4.5, not the original's 20 and 9.
    drop(page, name, canny_run[1])
    expect(page.locator(f"#{name}-restore-message")).to_contain_text("seed 4242")
    expect(page.locator(f"#{name}-fast input[type=checkbox]")).not_to_be_checked()
    page.wait_for_timeout(1000)
    number(page, f"{name}-ddim_steps").to_have_value("3")
    number(page, f"{name}-scale").to_have_value("4.5")
    # The user's own click on Fast still applies the preset.
    page.locator(f"#{name}-fast input[type=checkbox]").check()
    number(page, f"{name}-ddim_steps").to_have_value("4")
    page.locator(f"#{name}-fast input[type=checkbox]").uncheck()
    number(page, f"{name}-ddim_steps").to_have_value("20")


@pytest.mark.browser
def test_a_png_from_elsewhere_changes_nothing(page, canny_run, tmp_path):
    name = "hed"
    open_tab(page, name)
    page.locator(f"#{name}-prompt textarea").fill("my own prompt")
    drop(page, name, canny_run[1])
    message = page.locator(f"#{name}-restore-message")
    expect(message).to_contain_text("Settings not restored. This PNG was made with the Canny Edge Maps page (canny)")
    plain = write_png(tmp_path / "plain.png", np.zeros((64, 64, 3), np.uint8))
    drop(page, name, plain)
    expect(message).to_contain_text("plain.png carries no settings")
    expect(page.locator(f"#{name}-prompt textarea")).to_have_value("my own prompt")


@pytest.mark.browser
def test_dropping_a_multi_png_restores_its_units(page, client, image, tmp_path):
    units = [{"annotator": "canny", "weights": "cn11_canny", "strength": 0.7, "start": 0.1, "end": 0.8},
             {"annotator": "hed", "weights": "cn10_scribble", "strength": 1.4, "params": {"detect_resolution": 128}}]
    common = {p.name: p.default for p in COMMON} | {"num_samples": 1, "image_resolution": 256, "ddim_steps": 2,
                                                    "seed": 31, "scale": 6.5}
    gallery, _, _ = client.predict(units, [handle_file(str(image))] * 2, "two, things", *(common[p.name] for p in COMMON),
                                   "extra", "bad", "cfg_resolution_weighting", api_name="/multi")
    png = tmp_path / "multi.png"
    png.write_bytes(fetch(gallery[2]))
    open_tab(page, "multi")
    drop(page, "multi", png)
    expect(page.locator("#multi-restore-message")).to_contain_text("Restored the settings of a Multi-ControlNet image: "
                                                                   "seed 31")
    expect(page.locator("#multi-restore-message")).to_contain_text("unit 2's annotator settings (detect_resolution)")
    expect(page.locator("#multi-unit1-annotator input")).to_have_value("Canny Edge")
    expect(page.locator("#multi-unit1-weights input")).to_have_value(WEIGHTS["cn11_canny"].label)
    expect(page.locator("#multi-unit2-weights input")).to_have_value(WEIGHTS["cn10_scribble"].label)
    number(page, "multi-unit1-strength").to_have_value("0.7")
    number(page, "multi-unit1-end").to_have_value("0.8")
    number(page, "multi-unit2-strength").to_have_value("1.4")
    expect(page.locator("#multi-prompt textarea")).to_have_value("two, things")
    expect(page.locator("#multi-mode input[value=cfg_resolution_weighting]")).to_be_checked()
    open_advanced(page, "multi")
    number(page, "multi-seed").to_have_value("31")
    number(page, "multi-scale").to_have_value("6.5")
    page.screenshot(path=str(SCREENSHOTS / "restore_multi.png"), full_page=True)
