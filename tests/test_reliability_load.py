"""Load over the API (the CI size of `python -m bench.load`, which runs 20 users and 200 requests): 5
gradio_client users at once send 30 requests over a mix of endpoints, each with its own picture, size,
resolution, seed and sample count. None is lost, each answer is its own request's (its seed, its size, for the
weightless detectors its very map), and the server's resident memory at the end is within 5 % of what it was
after the first 12 requests (among them every kind of request, both resolutions and both sample counts). The
latency percentiles are printed (not asserted: they depend on the machine)."""
from __future__ import annotations

import pytest

from bench.load import make_requests, run_load
from tests.apps_server import API_SERVER_TESTS, start_server

pytestmark = API_SERVER_TESTS

USERS, REQUESTS, WARMUP = 5, 30, 12
DRIFT = 0.05


@pytest.fixture(scope="module")
def server():
    server = start_server("--app", "all", "--max-queue", "64")
    yield server
    server.stop()


def test_many_users_get_their_own_answers_and_memory_stays_flat(server, tmp_path):
    report = run_load(server.url, server.proc.pid, USERS, make_requests(REQUESTS, tmp_path), warmup=WARMUP)
    print(f"\n{USERS} users: {report.summary()}")
    assert len(report.outcomes) == REQUESTS
    assert not report.wrong, [(o.request.number, o.request.kind, o.error) for o in report.wrong]
    assert abs(report.drift) <= DRIFT, report.summary()
