"""Queue, Stop and bad input in the page (headless Chromium) of one `launch.py --app all --tiny --max-queue 2
--test-hold-file PATH` server: the page shows the queue position while it waits and "busy, try again" when
the queue is full; Stop and closing the page stop that page's run (the server's step count says it ended
after step 1) and free the slot at once for another user's run; a handful of the bad-input corpus through
the upload widget and the prompt box, each with its message, the server serving on."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.utils import Status
from playwright.sync_api import Page, expect

from tests.apps_server import BROWSER_SERVER_TESTS
from tests.input_corpus import build_corpus
from tests.test_apps_browser import browser, error_toast, open_advanced, open_app, set_number  # noqa: F401 (browser: a fixture)
from tests.test_reliability_inputs import app_call
# The same server as the queue tests' (--max-queue 2, a hold file): their fixtures.
from tests.test_reliability_queue import hold, hold_one_run, released, server, status, wait_until  # noqa: F401

pytestmark = [pytest.mark.browser, BROWSER_SERVER_TESTS]

TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def page(browser, server):
    pg = open_app(browser, server.url)
    yield pg
    if not pg.is_closed():
        pg.close()


def prepare_canny(page: Page, image: Path, steps: int = 3, prompt: str = "a test picture") -> None:
    page.set_input_files("#canny-input input[type=file]", str(image))
    expect(page.locator("#canny-input img").first).to_be_visible()
    page.locator("#canny-prompt textarea").fill(prompt)
    open_advanced(page, "canny")
    set_number(page, "canny-num_samples", 1)
    set_number(page, "canny-image_resolution", 256)
    set_number(page, "canny-ddim_steps", steps)


def api_call_args(image: Path, **values) -> tuple[list, str]:
    return app_call("canny", handle_file(str(image)), **values)


def api_job(server, image: Path, **values):
    args, api = api_call_args(image, **values)
    return Client(server.url, verbose=False).submit(*args, api_name=api)


def run_number(server, number: int) -> dict:
    return next(r for r in status(server)["recent_runs"] if r["number"] == number)


def started(job) -> bool:
    return job.status().code in (Status.PROCESSING, Status.PROGRESS, Status.ITERATING, Status.FINISHED)


def test_the_page_shows_its_queue_position_then_the_result(server, hold, page, corpus):
    image = corpus["rgba.png"].path
    first = hold_one_run(server, hold, api_call_args(image, ddim_steps=30))
    prepare_canny(page, image)
    set_number(page, "canny-seed", 4321)
    page.locator("#canny-run").click()
    expect(page.locator("#canny-gallery").get_by_text(re.compile(r"queue: 1/1"))).to_be_visible()
    hold.unlink()
    first.result(timeout=TIMEOUT_MS / 1000)
    expect(page.locator("#canny-seed-used")).to_contain_text("Seed used: 4321", timeout=TIMEOUT_MS)


def test_a_full_queue_says_so_in_the_page(server, hold, page, corpus):
    image = corpus["rgba.png"].path
    first = hold_one_run(server, hold, api_call_args(image, ddim_steps=30))
    waiting = [api_job(server, image, ddim_steps=3, seed=s) for s in (1, 2)]
    for job in waiting:
        wait_until(lambda: job.status().code == Status.IN_QUEUE, "the queue fills")
    prepare_canny(page, image)
    page.locator("#canny-run").click()
    error_toast(page, "This application is currently busy. Please try again.")
    hold.unlink()
    for job in [first, *waiting]:
        assert len(job.result(timeout=TIMEOUT_MS / 1000)[0]) == 2
    page.locator("#canny-run").click()  # the queue has room again: the page runs
    expect(page.locator("#canny-seed-used")).to_contain_text("Seed used:", timeout=TIMEOUT_MS)


def page_run_held(server, hold, page, image: Path, steps: int) -> int:
    """Run canny in the page with the hold on; the run's number once it is held after step 1."""
    prepare_canny(page, image, steps=steps)
    hold.touch()
    page.locator("#canny-run").click()
    wait_until(lambda: status(server)["runs_held"] == 1, "the page's run is held after step 1")
    return status(server)["recent_runs"][-1]["number"]


def test_stop_stops_the_pressers_run_and_another_user_starts_at_once(server, hold, page, corpus):
    image = corpus["grey.png"].path
    number = page_run_held(server, hold, page, image, steps=45)
    other = api_job(server, image, ddim_steps=3, seed=77)
    wait_until(lambda: other.status().code == Status.IN_QUEUE, "the other user waits")
    page.locator("#canny-stop").click()
    wait_until(lambda: started(other), "the other user's run starts once Stop is pressed", timeout=30)
    assert status(server)["runs_held"] == 1  # the stopped run is still parked: the slot was freed at once
    hold.unlink()
    assert "Seed used: **77**" in other.result(timeout=TIMEOUT_MS / 1000)[1]
    wait_until(lambda: run_number(server, number)["outcome"] != "running", "the page's run ends")
    stopped = run_number(server, number)
    assert stopped["outcome"] == "stopped" and stopped["steps"] == 1 < stopped["total"]


def test_closing_the_page_stops_its_run_and_frees_the_slot(server, hold, page, corpus):
    image = corpus["grey.png"].path
    number = page_run_held(server, hold, page, image, steps=47)
    other = api_job(server, image, ddim_steps=3, seed=78)
    wait_until(lambda: other.status().code == Status.IN_QUEUE, "the other user waits")
    page.close()
    wait_until(lambda: started(other), "the other user's run starts once the page is closed", timeout=60)
    hold.unlink()
    assert "Seed used: **78**" in other.result(timeout=TIMEOUT_MS / 1000)[1]
    wait_until(lambda: run_number(server, number)["outcome"] != "running", "the closed page's run ends")
    closed = run_number(server, number)
    assert closed["outcome"] == "stopped" and closed["steps"] == 1 < closed["total"]


@pytest.mark.parametrize("file,message", [
    ("drawing.svg", "is an SVG (vector) drawing"),
    ("bomb_declared.png", "declares a size of hundreds of millions of pixels"),
    ("text.png", "is a text file, not an image"),
    ("sixteen_bit.tiff", "only 8-bit images are accepted"),
])
def test_bad_upload_in_the_page(page, corpus, file, message):
    page.set_input_files("#canny-input input[type=file]", str(corpus[file].path))
    expect(page.locator("#canny-input button[aria-label='Remove Image']").first).to_be_visible()  # uploaded
    page.locator("#canny-run").click()
    error_toast(page, message)


def test_animated_upload_is_noted_and_runs(page, corpus):
    prepare_canny(page, corpus["animated.gif"].path)
    page.locator("#canny-run").click()
    toast = page.locator(".toast-body").filter(has_text="is animated (3 frames): its first frame is used")
    expect(toast.first).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#canny-seed-used")).to_contain_text("Seed used:", timeout=TIMEOUT_MS)


def test_hostile_prompt_in_the_page(page, corpus):
    prepare_canny(page, corpus["rgba.png"].path, prompt="a house\u202e by the sea")
    page.locator("#canny-run").click()
    error_toast(page, "Prompt: a bidirectional override (U+202E) at position 8")
    page.locator("#canny-prompt textarea").fill("a house 🏠 by the sea, בית")
    page.locator("#canny-run").click()
    expect(page.locator("#canny-seed-used")).to_contain_text("Seed used:", timeout=TIMEOUT_MS)


def test_too_big_a_file_is_refused_by_the_page(page, tmp_path, corpus):
    big = tmp_path / "big.png"
    big.write_bytes(corpus["rgba.png"].path.read_bytes() + b"\0" * (51 * 2**20))
    page.set_input_files("#canny-input input[type=file]", str(big))
    toast = page.locator(".toast-body").filter(has_text=re.compile(r"too large|exceed|maximum", re.IGNORECASE))
    expect(toast.first).to_be_visible(timeout=TIMEOUT_MS)
