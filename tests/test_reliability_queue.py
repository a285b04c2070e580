"""Concurrency, the bounded queue and Stop over the API of one `launch.py --app all --tiny --max-queue 2` server.

Runs are held at a known step with the server's test hook (`--test-hold-file`: a run waits after its first
sampling step while the file exists), so every test knows what runs and what waits without racing the clock:
* the queue holds 2 requests; the next is refused with "queue is full" and every queued one completes after;
* gradio_client's `job.cancel()` stops the run at its next step (asserted from the server's step count: the
  run ends before its last step) and frees the generation slot at once: the next user's queued run starts
  while the cancelled one is still parked in the hold;
* annotator previews run beside a generation; concurrent requests of two apps with different ControlNet
  weights and different pictures each get exactly what they get when run alone.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from gradio_client import Client, handle_file
from gradio_client.utils import QueueError, Status

from tests.apps_server import API_SERVER_TESTS, start_server
from tests.input_corpus import picture
from tests.test_apps_api import image_sizes
from tests.test_reliability_inputs import app_call, multi_call

pytestmark = API_SERVER_TESTS

MAX_QUEUE = 2
TIMEOUT = 120


@pytest.fixture(scope="module")
def hold(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hold") / "hold"


@pytest.fixture(scope="module")
def server(hold):
    server = start_server("--app", "all", "--max-queue", str(MAX_QUEUE), "--test-hold-file", str(hold))
    yield server
    hold.unlink(missing_ok=True)
    server.stop()


@pytest.fixture(autouse=True)
def released(hold):
    """No test leaves a run held."""
    yield
    hold.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    out = {}
    for name, image in (("first", picture()), ("second", np.ascontiguousarray(picture()[::-1, ::-1]))):
        out[name] = folder / f"{name}.png"
        PIL.Image.fromarray(image).save(out[name])
    return out


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def status(server) -> dict:
    return Client(server.url, verbose=False).predict(api_name="/status")


def record(state: dict, endpoint: str) -> dict:
    """The most recent run of `endpoint`."""
    return [r for r in state["recent_runs"] if r["endpoint"] == endpoint][-1]


def queued(job) -> bool:
    return job.status().code == Status.IN_QUEUE


def hold_one_run(server, hold: Path, call: tuple[list, str]):
    """Start `call` with the hold on and wait until it is parked after step 1; its gradio_client Job."""
    hold.touch()
    job = Client(server.url, verbose=False).submit(*call[0], api_name=call[1])
    wait_until(lambda: status(server)["runs_held"] == 1, "the first run is held after step 1")
    return job


def test_full_queue_refuses_with_a_message_then_every_queued_request_completes(server, hold, pictures):
    image = handle_file(str(pictures["first"]))
    before = status(server)["runs_finished"]
    running = hold_one_run(server, hold, app_call("canny", image, seed=100, ddim_steps=3))
    waiting = []
    for seed in (101, 102):
        waiting.append(Client(server.url, verbose=False).submit(*app_call("canny", image, seed=seed, ddim_steps=3)[0],
                                                                 api_name="/canny"))
        wait_until(lambda: queued(waiting[-1]), f"request {seed} waits in the queue")
    assert [job.status().rank for job in waiting] == [0, 1]

    refused = Client(server.url, verbose=False).submit(*app_call("canny", image, seed=103)[0], api_name="/canny")
    with pytest.raises(QueueError, match="Queue is full"):
        refused.result(timeout=TIMEOUT)
    request = urllib.request.Request(f"{server.url}gradio_api/call/canny", data=json.dumps({"data": []}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 503 and f"Queue is full. Max size is {MAX_QUEUE}" in err.value.read().decode()

    hold.unlink()
    for job, seed in zip([running, *waiting], (100, 101, 102)):
        gallery, seed_text, _ = job.result(timeout=TIMEOUT)
        assert f"Seed used: **{seed}**" in seed_text and image_sizes(gallery) == [(256, 320)] * 2
    after = status(server)
    assert after["runs_finished"] == before + 3 and after["runs_failed"] == 0


def test_cancel_stops_the_run_between_steps_and_frees_the_slot_at_once(server, hold, pictures):
    image = handle_file(str(pictures["first"]))
    long_run = hold_one_run(server, hold, app_call("canny", image, ddim_steps=40))
    other_user = Client(server.url, verbose=False).submit(*app_call("hed", image, seed=5, ddim_steps=3)[0], api_name="/hed")
    wait_until(lambda: queued(other_user), "the other user's run waits for the slot")

    long_run.cancel()
    # The slot is free at once: the other user's run starts while the cancelled one is still parked in the hold.
    wait_until(lambda: other_user.status().code in (Status.PROCESSING, Status.PROGRESS, Status.ITERATING),
               "the other user's run starts", timeout=30)
    state = status(server)
    assert state["runs_held"] == 1 and record(state, "canny")["outcome"] == "running"

    hold.unlink()
    gallery, seed_text, _ = other_user.result(timeout=TIMEOUT)
    assert "Seed used: **5**" in seed_text and len(gallery) == 2
    wait_until(lambda: record(status(server), "canny")["outcome"] != "running", "the cancelled run ends")
    stopped = record(status(server), "canny")
    assert stopped["outcome"] == "stopped" and stopped["steps"] == 1 < stopped["total"]
    other = record(status(server), "hed")
    assert other["outcome"] == "finished" and other["steps"] == other["total"]


def test_cancel_stops_a_multi_run_too(server, hold, pictures):
    units = [{"annotator": "canny", "weights": "cn10_canny"}]
    job = hold_one_run(server, hold, multi_call(units, [handle_file(str(pictures["first"]))], ddim_steps=30))
    job.cancel()
    hold.unlink()
    wait_until(lambda: record(status(server), "multi")["outcome"] != "running", "the cancelled multi run ends")
    stopped = record(status(server), "multi")
    assert stopped["outcome"] == "stopped" and stopped["steps"] == 1


def test_annotator_previews_run_beside_a_generation(server, hold, pictures):
    image = handle_file(str(pictures["first"]))
    job = hold_one_run(server, hold, app_call("canny", image, ddim_steps=35))
    maps = Client(server.url, verbose=False).predict(image, 100, 200, 256, api_name="/annotate_canny")
    assert image_sizes(maps) == [(256, 320)] and status(server)["runs_held"] == 1  # the generation still waits
    hold.unlink()
    assert len(job.result(timeout=TIMEOUT)[0]) == 2


def sample(result) -> np.ndarray:
    return np.asarray(PIL.Image.open(result[0][1]["image"]).convert("RGB"))


def test_concurrent_requests_get_their_own_weights_and_pictures(server, pictures):
    """Two apps and two weight files and two pictures at once: each answer equals the one it gets alone."""
    first, second = handle_file(str(pictures["first"])), handle_file(str(pictures["second"]))
    calls = {
        "canny 1.0, first": app_call("canny", first, seed=11, weights="cn10_canny"),
        "canny 1.1, first": app_call("canny", first, seed=11, weights="cn11_canny"),
        "canny 1.0, second": app_call("canny", second, seed=11, weights="cn10_canny"),
        "scribble, first": app_call("scribble", first, seed=11),
        "multi depth+canny, second": multi_call([{"annotator": "none", "weights": "cn10_depth"},
                                                 {"annotator": "canny", "weights": "cn11_canny"}], [second, first], seed=11),
    }
    alone = {name: Client(server.url, verbose=False).predict(*args, api_name=api) for name, (args, api) in calls.items()}
    samples = {name: sample(result) for name, result in alone.items()}
    assert not np.array_equal(samples["canny 1.0, first"], samples["canny 1.1, first"])  # the weights matter
    assert not np.array_equal(samples["canny 1.0, first"], samples["canny 1.0, second"])  # the picture matters

    order = list(calls) * 2
    with ThreadPoolExecutor(MAX_QUEUE + 1) as pool:  # one runs, the others wait: never more than the queue holds
        results = list(pool.map(lambda name: Client(server.url, verbose=False).predict(*calls[name][0],
                                                                                      api_name=calls[name][1]), order))
    for name, result in zip(order, results):
        assert np.array_equal(sample(result), samples[name]), name
        shown_map = np.asarray(PIL.Image.open(result[0][0]["image"]).convert("RGB"))
        assert np.array_equal(shown_map, np.asarray(PIL.Image.open(alone[name][0][0]["image"]).convert("RGB"))), name
