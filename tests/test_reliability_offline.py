"""A real (not tiny) server on a machine without network: HF_HUB_OFFLINE is not set, the hub's address refuses
connections (HF_ENDPOINT points at a closed local port), no weight file anywhere. The first request over the
API names the missing file within 5 s (not after half a minute of retries), and so does the next one."""
from __future__ import annotations

import time

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.apps_server import API_SERVER_TESTS, free_port, start_server
from tests.input_corpus import picture
from tests.test_reliability_inputs import app_call

pytestmark = API_SERVER_TESTS

FIRST_ANSWER_S = 5.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    empty = tmp_path_factory.mktemp("no-weights")
    closed = free_port()  # nothing listens there
    env = {"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_ENDPOINT": f"http://127.0.0.1:{closed}",
           "HF_HOME": str(tmp_path_factory.mktemp("hf-home")), "HF_HUB_CACHE": None,
           **{name: None for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}}
    server = start_server("--app", "all", "--models-dir", str(empty), tiny=False, env=env)
    yield server
    server.stop()


def test_the_first_request_without_network_names_the_missing_file_quickly(server, tmp_path):
    import PIL.Image

    image = tmp_path / "input.png"
    PIL.Image.fromarray(picture()).save(image)
    client = Client(server.url, verbose=False)
    args, api = app_call("canny", handle_file(str(image)))
    for attempt in ("first", "second"):
        started = time.monotonic()
        with pytest.raises(AppError) as err:
            client.predict(*args, api_name=api)
        elapsed = time.monotonic() - started
        assert "v1-5-pruned-emaonly.safetensors" in err.value.message, err.value.message
        assert "\n" not in err.value.message and "Traceback" not in err.value.message
        assert elapsed < FIRST_ANSWER_S, f"the {attempt} request took {elapsed:.1f} s"
    assert client.predict(api_name="/status")["base_loads"] == 0
