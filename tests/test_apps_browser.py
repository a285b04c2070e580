"""End to end in headless Chromium: every app of `launch.py --app all --tiny` (and one single-app server)
uploads or draws an input (the inpaint app: paints its mask with the mouse), runs, and shows the detected map
plus the requested images at the expected size. The 1.0 and 1.1 apps sit in two group tabs. Screenshots of
every page go to artifacts/screenshots/. A missing browser fails these tests."""
from __future__ import annotations

import itertools
import json
import re
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from apps.annotators import SECTIONS as ANNOTATOR_SECTIONS
from apps.pages import PAGES
from apps.registry import APPS, GROUP_OF, GROUPS
from apps.builder import TINY_BANNER, group_id
from weights.table import WEIGHTS
from tests.apps_server import BROWSER_SERVER_TESTS, CHROMIUM_ARGS, SCREENSHOTS, bad_inputs, input_image_path, require_browser, shared_server, start_server

pytestmark = [pytest.mark.browser, BROWSER_SERVER_TESTS]

RESOLUTION = 256
DETECT_RESOLUTION = 128  # the smallest: the random-weight detectors are the slow part
SAMPLES = 2
INPUT_H, INPUT_W = 256, 320  # at resolution 256 the output is 256×320
TIMEOUT_MS = 300_000  # a wait for a run, not a time limit: under `-n auto` a 30 s run has taken 117-132 s on CI
SEEDS = itertools.count(1000)


@pytest.fixture(scope="module")
def server():
    return shared_server("--app", "all")


@pytest.fixture(scope="module")
def browser():
    executable = require_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_app(browser, url: str) -> Page:
    """A new page on the suite at `url`, once it is up (the canny tab's Run button is there)."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(url)
    pg.wait_for_selector("#canny-run")
    return pg


@pytest.fixture(scope="module")
def page(browser, server):
    pg = open_app(browser, server.url)
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    return input_image_path(tmp_path_factory.mktemp("inputs"), INPUT_H, INPUT_W)


def status(server) -> dict:
    payload = json.dumps({"data": []}).encode()
    request = urllib.request.Request(server.url + "gradio_api/call/status", data=payload,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(server.url + f"gradio_api/call/status/{event_id}", timeout=60) as r:
        lines = r.read().decode().splitlines()
    data = next(line for line in lines if line.startswith("data:"))
    return json.loads(data[len("data:"):])[0]


def open_tab(page: Page, name: str) -> None:
    """Open page `name`'s tab (inside its group's tab when it has one)."""
    scope = page
    if name in GROUP_OF:
        group = group_id(GROUP_OF[name])
        page.locator(f"#tab-{group}-button").click()
        expect(page.locator(f"#tab-{group}")).to_be_visible()
        scope = page.locator(f"#tab-{group}")
    button = scope.locator(f"#tab-{name}-button")
    panel = page.locator(f"#tab-{name}")
    for _ in range(4):  # a tab bar that has just been shown may still move buttons into its overflow menu
        try:
            if button.count() and button.is_visible():
                button.click(timeout=10_000)
            else:  # tabs that do not fit sit behind the overflow menu
                scope.locator(".overflow-menu button[aria-label='More tabs']").first.click(timeout=10_000)
                scope.locator(".overflow-dropdown button").get_by_text(PAGES[name].title, exact=True).click(
                    timeout=10_000)
            expect(panel).to_be_visible(timeout=10_000)
            return
        except (PlaywrightTimeoutError, AssertionError):
            page.keyboard.press("Escape")  # closes an overflow menu left open
    expect(panel).to_be_visible()


def set_number(page: Page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    for _ in range(3):  # a control that has just been mounted may reset what was typed into it once
        box.fill(str(value))
        box.press("Enter")
        try:
            expect(box).to_have_value(str(value), timeout=3000)
            return
        except AssertionError:
            page.wait_for_timeout(300)
    expect(box).to_have_value(str(value))


def open_advanced(page: Page, name: str) -> None:
    if not page.locator(f"#{name}-image_resolution").is_visible():
        page.locator(f"#{name}-advanced").get_by_text("Advanced options").click()
    expect(page.locator(f"#{name}-image_resolution")).to_be_visible()


def gallery_sizes(page: Page, gallery_id: str, count: int) -> list[tuple[int, int]]:
    images = page.locator(f"#{gallery_id} img")
    try:
        expect(images).to_have_count(count, timeout=TIMEOUT_MS)
    except AssertionError as err:  # say what the gallery shows instead
        items = page.locator(f"#{gallery_id} .thumbnail-item").evaluate_all(
            "items => items.map(i => i.getAttribute('aria-label') + ': ' + (i.querySelector('img')?.alt ?? "
            "i.innerHTML.slice(0, 200)))")
        raise AssertionError(f"{err}\ngallery items: {items}") from None
    page.wait_for_function(
        f"() => Array.from(document.querySelectorAll('#{gallery_id} img')).every(i => i.complete && i.naturalWidth > 0)")
    return [tuple(s) for s in images.evaluate_all("imgs => imgs.map(i => [i.naturalHeight, i.naturalWidth])")]


def error_toast(page: Page, text: str) -> None:
    toast = page.locator(".toast-body").filter(has_text=text)
    expect(toast.first).to_be_visible(timeout=TIMEOUT_MS)
    dismiss_toasts(page)


def dismiss_toasts(page: Page) -> None:
    """Close every toast in one page-side call: a toast may time out and leave the DOM between finding its close
    button and clicking it, and Playwright's click would then wait for an element that never comes back."""
    page.evaluate("() => document.querySelectorAll('.toast-close').forEach(b => b.click())")
    expect(page.locator(".toast-body")).to_have_count(0)


def draw_on_canvas(page: Page, name: str) -> None:
    page.locator(f"#{name}-input button[aria-label='Brush']").click()
    canvas = page.locator(f"#{name}-input canvas").first
    box = canvas.bounding_box()
    for k in range(2):  # every mouse step repaints the canvas: few strokes, few steps
        y = box["y"] + box["height"] * (0.3 + 0.3 * k)
        page.mouse.move(box["x"] + box["width"] * 0.2, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.8, y + 10, steps=4)
        page.mouse.up()


def upload_to_editor(page: Page, name: str, image_file: Path) -> None:
    """Upload into the image editor once its toolbar is there: an upload into an editor whose canvas is still
    being set up is dropped (it stays empty, "… select the draw tool to start"), and so can be the next ones.
    The upload is repeated until the image shows."""
    expect(page.locator(f"#{name}-input button[aria-label='Brush']")).to_be_visible()
    empty = page.locator(f"#{name}-input").get_by_text("select the draw tool to start")
    for _ in range(3):
        page.set_input_files(f"#{name}-input input[type=file]", str(image_file))
        try:
            expect(empty).to_have_count(0, timeout=5000)
            return
        except AssertionError:
            continue
    expect(empty).to_have_count(0)


def paint_mask(page: Page, name: str) -> None:
    """One brush stroke across the middle of the uploaded image (the editor centres the image in its canvas)."""
    page.locator(f"#{name}-input button[aria-label='Brush']").click()
    page.wait_for_timeout(300)
    box = page.locator(f"#{name}-input canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 80, y)
    page.mouse.down()
    for k in range(1, 9):
        page.mouse.move(x - 80 + 20 * k, y + 2 * k)
    page.mouse.up()


def choose_preprocessor(page: Page, name: str) -> str | None:
    """On a 1.1 page with a Preprocessor radio, the first choice that runs a detector (Shuffle, Lineart_Anime…)."""
    spec = APPS[name]
    if len(spec.preprocessors) < 2:
        return None
    choice = next(p for p in spec.preprocessors if p.detector is not None)
    page.locator(f"#{name}-preprocessor").get_by_label(choice.label, exact=True).check()
    return choice.label


def expected_items(name: str) -> int:
    """Gallery items of a run with `choose_preprocessor`'s choice: the first item (map, input or hint), then the
    samples (only shuffle with None would show no map)."""
    return 1 + SAMPLES


def run_app_page(page: Page, name: str, image_file: Path, tabs: bool = True) -> list[tuple[int, int]]:
    spec = APPS[name]
    if tabs:
        open_tab(page, name)
    if spec.canvas:
        set_number(page, f"{name}-canvas-width", INPUT_W)
        set_number(page, f"{name}-canvas-height", INPUT_H)
        page.locator(f"#{name}-open-canvas").click()
        page.wait_for_timeout(500)
        draw_on_canvas(page, name)
    elif spec.paint_mask:
        upload_to_editor(page, name, image_file)
        paint_mask(page, name)
    else:
        page.set_input_files(f"#{name}-input input[type=file]", str(image_file))
        expect(page.locator(f"#{name}-input img").first).to_be_visible()
    page.locator(f"#{name}-prompt textarea").fill("a test picture")
    choose_preprocessor(page, name)
    open_advanced(page, name)
    set_number(page, f"{name}-num_samples", SAMPLES)
    set_number(page, f"{name}-image_resolution", RESOLUTION)
    set_number(page, f"{name}-ddim_steps", 1)
    if spec.detect_resolution is not None:
        set_number(page, f"{name}-detect_resolution", DETECT_RESOLUTION)
    seed = next(SEEDS)  # a new seed per run: the page showing it proves the gallery holds this run's result
    set_number(page, f"{name}-seed", seed)
    page.locator(f"#{name}-run").click()
    expect(page.locator(f"#{name}-seed-used")).to_contain_text(f"Seed used: {seed}", timeout=TIMEOUT_MS)
    return gallery_sizes(page, f"{name}-gallery", expected_items(name))


def test_tiny_banner_and_tabs(page):
    expect(page.locator("#tiny-banner")).to_contain_text(TINY_BANNER)
    for group in GROUPS:
        expect(page.locator(f"#tab-{group_id(group)}-button")).to_have_text(group)
    for name in PAGES:
        if name not in GROUP_OF:
            expect(page.locator(f"#tab-{name}-button")).to_have_count(1)


@pytest.mark.parametrize("group", list(GROUPS))
def test_group_tab_holds_its_apps(page, group):
    page.locator(f"#tab-{group_id(group)}-button").click()
    panel = page.locator(f"#tab-{group_id(group)}")
    expect(panel).to_be_visible()
    titles = panel.locator("[role=tablist] button[role=tab], .overflow-dropdown button").all_text_contents()
    assert [PAGES[spec.name].title for spec in GROUPS[group]] == [t.strip() for t in titles]


def is_drawing_app(name: str) -> bool:
    return APPS[name].canvas is not None or APPS[name].paint_mask


@pytest.mark.parametrize("name", list(APPS))
def test_app_runs(page, browser, server, image_file, name):
    # The drawing apps run in a page of their own, closed after: once shown, an image editor keeps redrawing its
    # canvas even from a hidden tab, and without a GPU Chromium's software WebGL then takes over half a core,
    # which slowed every later test of a shared page (a 30 s run took 120 s on a busy 2-core machine).
    own_page = is_drawing_app(name)
    pg = open_app(browser, server.url) if own_page else page
    try:
        sizes = run_app_page(pg, name, image_file)
        assert sizes == [(INPUT_H, INPUT_W)] * expected_items(name), sizes
        expect(pg.locator(f"#{name}-about")).to_contain_text(WEIGHTS[APPS[name].weights[0]].basename)  # its file
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    finally:
        if own_page:
            pg.close()


def test_switching_tabs_reuses_the_base(page, server):
    state = status(server)
    assert state["base_loads"] == 1, state
    expected = {spec.weights[0] for spec in APPS.values()}
    assert expected <= set(state["control_loads"]), state
    # the page says it too, in the tab that ran last on this page
    last = [name for name in APPS if not is_drawing_app(name)][-1]
    expect(page.locator(f"#{last}-status")).to_contain_text("base loads: 1")


@pytest.mark.parametrize("section", [s.name for s in ANNOTATOR_SECTIONS])
def test_annotator_section_runs(page, image_file, section):
    open_tab(page, "annotators")
    spec = next(s for s in ANNOTATOR_SECTIONS if s.name == section)
    page.set_input_files(f"#annotate-{section}-input input[type=file]", str(image_file))
    set_number(page, f"annotate-{section}-resolution", RESOLUTION)
    page.locator(f"#annotate-{section}-run").click()
    sizes = gallery_sizes(page, f"annotate-{section}-gallery", len(spec.detectors))
    assert sizes == [(INPUT_H, INPUT_W)] * len(spec.detectors)
    if section == ANNOTATOR_SECTIONS[-1].name:
        page.screenshot(path=str(SCREENSHOTS / "annotators.png"), full_page=True)


@pytest.mark.parametrize("kind", ["corrupt", "too large", "16-bit"])
def test_bad_upload_shows_error_then_recovers(page, image_file, tmp_path, kind):
    name = "canny"
    open_tab(page, name)
    bad = bad_inputs(tmp_path)[kind]
    page.set_input_files(f"#{name}-input input[type=file]", str(bad))
    page.locator(f"#{name}-run").click()
    error_toast(page, {"corrupt": "Could not read", "too large": "at most", "16-bit": "only 8-bit"}[kind])
    # the server keeps serving: a good upload works right after
    page.locator(f"#{name}-input button[aria-label='Remove Image']").first.click()
    assert run_app_page(page, name, image_file) == [(INPUT_H, INPUT_W)] * (1 + SAMPLES)


def test_progress_and_stop(browser, server, image_file):
    name = "canny"
    page = open_app(browser, server.url)
    try:
        run_app_page(page, name, image_file)  # a finished run first, so the inputs are in place
        set_number(page, f"{name}-ddim_steps", 100)
        set_number(page, f"{name}-image_resolution", 512)
        page.locator(f"#{name}-run").click()
        progress = page.locator(f"#{name}-gallery").get_by_text(re.compile(r"Sampling"))
        expect(progress.first).to_be_visible(timeout=TIMEOUT_MS)
        page.locator(f"#{name}-stop").click()
        expect(progress).to_have_count(0)
        # the server stopped sampling at the next step: a new (short) run gets the generate slot and finishes
        assert run_app_page(page, name, image_file) == [(INPUT_H, INPUT_W)] * (1 + SAMPLES)
    finally:
        page.close()


def test_missing_image_shows_error(page, image_file):
    name = "hed"
    open_tab(page, name)
    clear = page.locator(f"#{name}-input button[aria-label='Remove Image']")
    if clear.count():
        clear.first.click()
    page.locator(f"#{name}-run").click()
    error_toast(page, "No input image")


def test_single_app_server(browser, image_file):
    server = shared_server("--app", "scribble")
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        pg.goto(server.url)
        expect(pg.locator("#tiny-banner")).to_be_visible()
        expect(pg.locator("[role=tab]")).to_have_count(0)
        expect(pg.get_by_text("Control Stable Diffusion with Scribble Maps")).to_be_visible()
        sizes = run_app_page(pg, "scribble", image_file, tabs=False)
        assert sizes == [(INPUT_H, INPUT_W)] * (1 + SAMPLES)
        pg.screenshot(path=str(SCREENSHOTS / "single_scribble.png"), full_page=True)
    finally:
        pg.close()


def test_fast_is_on_by_default_on_a_cpu(browser, tmp_path):
    """The real model (not tiny) on the CPU: the page opens with Fast on and the preset's values (no weights are
    needed for that: the model loads on the first run)."""
    server = start_server("--app", "canny", "--offline", "--models-dir", str(tmp_path), tiny=False)
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        pg.goto(server.url)
        expect(pg.locator("#canny-fast input[type=checkbox]")).to_be_checked()
        open_advanced(pg, "canny")
        expect(pg.locator("#canny-ddim_steps input[type=number]")).to_have_value("4")
        expect(pg.locator("#canny-sampler input")).to_have_value("LCM")
        pg.screenshot(path=str(SCREENSHOTS / "fast_default.png"), full_page=True)
    finally:
        pg.close()
        server.stop()



def test_fast_switch_sets_the_preset_and_runs(page, image_file):
    """Fast on: Steps 4 (range 2–8), Guidance 1, the LCM sampler; a run says so; Fast off restores the original's."""
    name = "depth"
    open_tab(page, name)
    open_advanced(page, name)
    page.locator(f"#{name}-fast input[type=checkbox]").check()
    expect(page.locator(f"#{name}-ddim_steps input[type=number]")).to_have_value("4")
    expect(page.locator(f"#{name}-scale input[type=number]")).to_have_value("1")
    expect(page.locator(f"#{name}-sampler input")).to_have_value("LCM")
    page.set_input_files(f"#{name}-input input[type=file]", str(image_file))
    page.locator(f"#{name}-prompt textarea").fill("a test picture")
    set_number(page, f"{name}-image_resolution", RESOLUTION)
    set_number(page, f"{name}-detect_resolution", DETECT_RESOLUTION)
    set_number(page, f"{name}-ddim_steps", 2)
    page.locator(f"#{name}-run").click()
    expect(page.locator(f"#{name}-seed-used")).to_contain_text("LCM, 2 steps · Fast", timeout=TIMEOUT_MS)
    page.locator(f"#{name}-fast input[type=checkbox]").uncheck()
    expect(page.locator(f"#{name}-ddim_steps input[type=number]")).to_have_value("20")
    expect(page.locator(f"#{name}-scale input[type=number]")).to_have_value("9")
    expect(page.locator(f"#{name}-sampler input")).to_have_value("DDIM")
