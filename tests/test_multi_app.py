"""The multi-condition page: the control bank (resident ControlNets, bounded, read through the shared model), the
`/multi` endpoint over gradio_client (maps + samples; bad units refused with a message naming the unit and
the value; the server keeps serving) and the page end to end in headless Chromium (`launch.py --app all
--tiny`, screenshot in artifacts/screenshots/multi.png)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from playwright.sync_api import expect

from apps.controls import A_PROMPT, N_PROMPT
from apps.multi_request import COMMON
from cldm.control_bank import MAX_UNITS, ControlBank, ControlBankError
from cldm.shared_model import SharedModel
from tests.apps_server import BROWSER_SERVER_TESTS, SCREENSHOTS, input_image_path, shared_server, synthetic_image, write_png
from tests.test_apps_api import image_sizes
from tests.test_apps_browser import TIMEOUT_MS, browser, dismiss_toasts, open_app, open_tab, set_number  # noqa: F401
from tests.test_apps_browser import gallery_sizes as page_gallery_sizes
from weights.table import WEIGHTS

pytestmark = BROWSER_SERVER_TESTS

RESOLUTION = 256
INPUT_H, INPUT_W = 256, 320  # at resolution 256 the output is 256×320


# ---- the control bank (no server) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manager() -> SharedModel:
    return SharedModel(tiny=True, device="cpu")


def weights_of(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_bank_serves_each_key_with_the_managers_weights(manager):
    bank = ControlBank(manager)
    keys = ["cn10_canny", "cn10_depth", "cn11_seg"]
    with bank.hold(keys) as (model, nets):
        held = {k: weights_of(nets[k]) for k in keys}
        assert len({id(n) for n in nets.values()}) == 3
    for key in keys:  # what the manager itself swaps in for that key (tiny: random, seeded by the key)
        with manager.activate(key) as model:
            expected = model.control_model.state_dict()
            assert all(torch.equal(held[key][k], v) for k, v in expected.items()), key
    assert not torch.equal(held["cn10_canny"]["input_hint_block.0.weight"], held["cn10_depth"]["input_hint_block.0.weight"])


def test_bank_is_bounded_and_reuses(manager):
    bank = ControlBank(manager)
    with bank.hold(["cn10_canny", "cn10_hed"]):
        pass
    copies = bank.copies
    with manager.activate("cn10_hed"):
        pass
    with bank.hold(["cn10_canny", "cn10_hed"]) as (model, nets):  # hed is in the base model, canny in the bank
        assert nets["cn10_hed"] is model.control_model
    assert bank.copies == copies
    for keys in (["cn10_mlsd", "cn10_seg", "cn10_normal"], ["cn10_scribble", "cn10_openpose", "cn11_depth"]):
        with bank.hold(keys):
            pass
        assert len(bank.status()["bank_controls"]) <= MAX_UNITS - 1
    with pytest.raises(ControlBankError, match="at most 3"):
        with bank.hold(["cn10_canny", "cn10_hed", "cn10_mlsd", "cn10_seg"]):
            pass
    with pytest.raises(ControlBankError, match="unknown"):
        with bank.hold(["cn10_nothing"]):
            pass


# ---- the API ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    return shared_server("--app", "all")


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("multi-inputs")
    square = synthetic_image(288, 288)[:, ::-1].copy()  # another picture, another aspect ratio (stretched)
    return [input_image_path(folder, INPUT_H, INPUT_W), write_png(folder / "second.png", square)]


def multi_args(units: list[dict], files: list[Path], mode: str = "balanced", **values) -> list:
    """Positional arguments of /multi: units, images, prompt, the common controls, added/negative prompt, mode."""
    common = {p.name: p.default for p in COMMON}
    common.update({"num_samples": 2, "image_resolution": RESOLUTION, "ddim_steps": 1, "seed": 7, **values})
    return [units, [handle_file(str(f)) for f in files], "a test picture", *(common[p.name] for p in COMMON),
            A_PROMPT, N_PROMPT, mode]


TWO_UNITS = [
    {"annotator": "canny", "weights": "cn10_canny", "strength": 1.0, "start": 0.0, "end": 1.0},
    {"annotator": "hed", "weights": "cn10_hed", "strength": 0.6, "start": 0.0, "end": 0.5, "params": {"detect_resolution": 128}},
]


def test_multi_endpoint_is_listed(client):
    assert "/multi" in client.view_api(return_format="dict", print_info=False)["named_endpoints"]


def test_two_units_give_two_maps_and_the_samples(client, images):
    gallery, seed_text, status_text = client.predict(*multi_args(TWO_UNITS, images), api_name="/multi")
    assert image_sizes(gallery) == [(INPUT_H, INPUT_W)] * 4
    assert [item["caption"] for item in gallery] == ["unit 1: canny map", "unit 2: hed map", "sample 1", "sample 2"]
    assert "Seed used: **7**" in seed_text
    assert "base loads: 1" in status_text


def test_a_1_1_unit_joins_a_1_0_unit(client, images):
    units = [{"annotator": "canny"},
             {"annotator": "v11_lineart/Lineart", "strength": 0.8, "params": {"detect_resolution": 128}}]
    gallery, _, _ = client.predict(*multi_args(units, images, num_samples=1), api_name="/multi")
    assert image_sizes(gallery) == [(INPUT_H, INPUT_W)] * 3
    assert gallery[1]["caption"] == "unit 2: v11_lineart/Lineart map"
    assert {"cn10_canny_fp16", "cn11_lineart_fp16"} <= set(client.predict(api_name="/status")["control_loads"])


@pytest.mark.parametrize("mode", ["guess", "cfg_resolution_weighting"])
def test_every_mode_runs(client, images, mode):
    units = [{"annotator": "none", "weights": "cn10_depth", "strength": 1.5}, {"annotator": "scribble", "start": 0.5}]
    gallery, _, _ = client.predict(*multi_args(units, images, mode=mode, num_samples=1), api_name="/multi")
    assert image_sizes(gallery) == [(INPUT_H, INPUT_W)] * 3


BAD_UNITS = [
    ({"end": 0.3, "start": 0.5}, "Unit 2: End \\(0.3\\) must be greater than Start \\(0.5\\)"),
    ({"end": 0.5, "start": 0.5}, "Unit 2: End"),
    ({"annotator": "sobel"}, "Unit 2: unknown annotator 'sobel'"),
    ({"strength": 5}, "Unit 2: Control Strength: 5.0 is outside the allowed range"),
    ({"weights": "sd15"}, "Unit 2: ControlNet weights 'sd15' are unknown"),
    ({"params": {"detect_resolution": 64}}, "Unit 2: HED Resolution"),
    ({"colour": "red"}, "Unit 2: unknown key"),
]


@pytest.mark.parametrize("change,message", BAD_UNITS, ids=[next(iter(c)) + str(i) for i, (c, _) in enumerate(BAD_UNITS)])
def test_bad_unit_is_refused_then_the_next_request_works(client, images, change, message):
    bad = [TWO_UNITS[0], {**TWO_UNITS[1], **change}]
    with pytest.raises(AppError, match=message):
        client.predict(*multi_args(bad, images), api_name="/multi")
    gallery, _, _ = client.predict(*multi_args(TWO_UNITS[:1], images[:1], num_samples=1), api_name="/multi")
    assert len(gallery) == 2


@pytest.mark.parametrize("units,count,message", [
    (TWO_UNITS, 1, "2 unit\\(s\\) but 1 image file"),
    ([], 0, "No input image"),
    ([TWO_UNITS[0]] * 4, 4, "At most 3 units"),
    ("not json", 1, "units: not valid JSON"),
])
def test_bad_unit_lists_are_refused(client, images, units, count, message):
    with pytest.raises(AppError, match=message):
        client.predict(*multi_args(units, (images * 2)[:count]), api_name="/multi")


def test_bad_common_values_are_refused(client, images):
    with pytest.raises(AppError, match="Steps"):
        client.predict(*multi_args(TWO_UNITS, images, ddim_steps=0), api_name="/multi")
    with pytest.raises(AppError, match="Control mode.*cfg_resolution_weighting"):
        client.predict(*multi_args(TWO_UNITS, images, mode="loud"), api_name="/multi")


def test_same_seed_same_images(client, images):
    runs = [client.predict(*multi_args(TWO_UNITS, images, num_samples=1, seed=s), api_name="/multi")[0] for s in (5, 5, 6)]
    pixels = [np.asarray(PIL.Image.open(g[-1]["image"])) for g in runs]
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


# ---- the page in the browser -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(browser, server, images):
    """The Multi-ControlNet tab with two units filled in: canny on the first image, the second image as its map."""
    pg = open_app(browser, server.url)
    open_tab(pg, "multi")
    for number, (image, annotator) in enumerate(zip(images, ("canny", "none")), start=1):
        pg.set_input_files(f"#multi-unit{number}-image input[type=file]", str(image))
        expect(pg.locator(f"#multi-unit{number}-image img").first).to_be_visible()
        pg.locator(f"#multi-unit{number}-annotator input").click()
        pg.get_by_role("option", name=annotator, exact=False).first.click()
    expect(pg.locator("#multi-unit1-annotator input")).to_have_value("Canny Edge")
    expect(pg.locator("#multi-unit2-weights input")).to_have_value(WEIGHTS["cn10_depth_fp16"].label)  # kept for "none"
    pg.locator("#multi-prompt textarea").fill("a test picture")
    pg.locator("#multi-advanced").get_by_text("Advanced options").click()
    yield pg
    pg.close()


def run_page(page, samples: int = 2, steps: int = 1, resolution: int = RESOLUTION) -> None:
    for control, value in (("num_samples", samples), ("image_resolution", resolution), ("ddim_steps", steps)):
        set_number(page, f"multi-{control}", value)
    page.locator("#multi-run").click()


@pytest.mark.browser
def test_page_runs_two_units(page):
    page.locator("#multi-mode").get_by_text("Guess", exact=True).click()
    run_page(page)
    assert page_gallery_sizes(page, "multi-gallery", 4) == [(INPUT_H, INPUT_W)] * 4
    expect(page.locator("#multi-seed-used")).to_contain_text("Seed used")
    expect(page.locator("#multi-status")).to_contain_text(re.compile(r"extra resident ControlNets: .*\(at most 2\)"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "multi.png"), full_page=True)


@pytest.mark.browser
def test_page_refuses_a_bad_window_then_runs(page):
    set_number(page, "multi-unit2-start", 0.6)
    set_number(page, "multi-unit2-end", 0.4)
    run_page(page)
    toast = page.locator(".toast-body").filter(has_text="Unit 2: End (0.4) must be greater than Start (0.6)")
    expect(toast.first).to_be_visible()
    dismiss_toasts(page)
    set_number(page, "multi-unit2-end", 1)
    run_page(page, samples=1)
    assert page_gallery_sizes(page, "multi-gallery", 3) == [(INPUT_H, INPUT_W)] * 3


@pytest.mark.browser
def test_page_progress_and_stop(page):
    run_page(page, samples=4, steps=100, resolution=768)
    progress = page.locator("#multi-gallery").get_by_text(re.compile("Sampling"))
    expect(progress.first).to_be_visible(timeout=TIMEOUT_MS)
    page.locator("#multi-stop").click()
    expect(progress).to_have_count(0)
    # sampling stopped at the next step: a new short run gets the generate slot and finishes
    run_page(page, samples=1)
    assert page_gallery_sizes(page, "multi-gallery", 3) == [(INPUT_H, INPUT_W)] * 3


def test_multi_alone(images):
    server = shared_server("--app", "multi")
    client = Client(server.url, verbose=False)
    gallery, _, _ = client.predict(*multi_args(TWO_UNITS[:1], images[:1], num_samples=1), api_name="/multi")
    assert len(gallery) == 2
    assert client.predict(api_name="/status")["base_loads"] == 1
