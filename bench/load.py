"""Load test: many gradio_client users at once against one `launch.py --app all --tiny` server.

    python -m bench.load                          # 20 users, 200 requests (starts its own server)
    python -m bench.load --users 5 --requests 50  # the CI size (tests/test_reliability_load.py)

Every request has its own input picture (shapes drawn from the request's number), size, resolution, seed and
sample count, over a mix of endpoints (/canny with both weight files, /scribble, /hed, /multi,
/annotate_canny). Each answer is checked to be its own: the gallery holds the map and the requested number of
images at the size its input and resolution give, the result line reports its seed, and for the weightless
detectors (Canny, scribble) the map shown is, pixel for pixel, the map of its own input computed here.

Reported: requests lost or wrong, latency percentiles (p50/p90/p99, seconds from submit to result), and the
server's resident memory after the first `--users` requests (the warm-up) and at the end (the drift).
"""
from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import psutil

from apps.backend import Backend
from apps.controls import A_PROMPT, N_PROMPT
from apps.multi_request import COMMON
from apps.registry import APPS
from apps.spec import control_map
from annotator.util import resize_image
from cldm.shared_model import SharedModel

SIZES = ((256, 320), (320, 256), (256, 256), (192, 384), (288, 224))  # input H×W
RESOLUTIONS = (256, 320)
KINDS = ("canny", "canny11", "scribble", "hed", "multi", "annotate_canny", "canny", "scribble")


@dataclass
class Request:
    number: int
    kind: str
    size: tuple[int, int]
    resolution: int
    seed: int
    samples: int
    path: Path

    @property
    def expected_size(self) -> tuple[int, int]:
        return resize_image(np.zeros((*self.size, 3), np.uint8), self.resolution).shape[:2]


@dataclass
class Outcome:
    request: Request
    latency: float
    error: str | None = None  # None: the answer was the request's own


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    rss_after_warmup: int = 0
    rss_after: int = 0

    @property
    def wrong(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]

    def percentiles(self) -> dict[str, float]:
        latencies = np.array([o.latency for o in self.outcomes])
        return {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90, 99)}

    @property
    def drift(self) -> float:
        return self.rss_after / self.rss_after_warmup - 1.0

    def summary(self) -> str:
        p = self.percentiles()
        return (f"{len(self.outcomes)} requests, {len(self.wrong)} wrong or lost; latency p50 {p['p50']:.2f} s, "
                f"p90 {p['p90']:.2f} s, p99 {p['p99']:.2f} s; server RSS {self.rss_after_warmup / 2**20:.0f} MiB after "
                f"the warm-up, {self.rss_after / 2**20:.0f} MiB at the end ({100 * self.drift:+.1f} %)")


def picture(number: int, size: tuple[int, int]) -> np.ndarray:
    """A picture only request `number` has: dark strokes and blobs placed by the number on light paper."""
    rng = np.random.default_rng(number)
    height, width = size
    img = np.full((height, width, 3), 230, np.uint8)
    for _ in range(6):
        x0, x1 = sorted(rng.integers(0, width, 2))
        y0, y1 = sorted(rng.integers(0, height, 2))
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), tuple(int(c) for c in rng.integers(0, 200, 3)), 3)
    cv2.circle(img, (int(rng.integers(0, width)), int(rng.integers(0, height))), int(rng.integers(10, 60)),
               (20, 20, 20), -1)
    return img


def make_requests(count: int, folder: Path, first: int = 0) -> list[Request]:
    folder.mkdir(parents=True, exist_ok=True)
    requests = []
    for number in range(first, first + count):
        size = SIZES[number % len(SIZES)]
        path = folder / f"request_{number}.png"
        PIL.Image.fromarray(picture(number, size)).save(path)
        requests.append(Request(number, KINDS[number % len(KINDS)], size, RESOLUTIONS[number // 3 % 2],
                                seed=1000 + number, samples=1 + number % 2, path=path))
    return requests


def app_arguments(request: Request, handle_file) -> tuple[list, str]:
    """(positional arguments, api_name) of `request`."""
    image = handle_file(str(request.path))
    if request.kind == "annotate_canny":
        return [image, 100, 200, request.resolution], "/annotate_canny"
    if request.kind == "multi":
        units = [{"annotator": "canny", "weights": "cn10_canny"}, {"annotator": "scribble", "strength": 0.5}]
        common = {"num_samples": request.samples, "image_resolution": request.resolution, "ddim_steps": 1,
                  "scale": 9.0, "seed": request.seed, "eta": 0.0}
        return [units, [image, image], "a test", *(common[p.name] for p in COMMON), A_PROMPT, N_PROMPT,
                "balanced"], "/multi"
    name = "canny" if request.kind == "canny11" else request.kind
    spec = APPS[name]
    values = {p.name: p.default for p in spec.controls}
    values.update(num_samples=request.samples, image_resolution=request.resolution, ddim_steps=1, seed=request.seed)
    if spec.detect_resolution is not None:
        values["detect_resolution"] = 128
    weights = "cn11_canny" if request.kind == "canny11" else spec.weights[0]
    return [image, "a test", *(values[p.name] for p in spec.controls), A_PROMPT, N_PROMPT, weights], f"/{name}"


class Expected:
    """The maps of the weightless detectors, computed here the way the server does."""

    def __init__(self):
        self.backend = Backend(SharedModel(tiny=True, device="cpu"))

    def app_map(self, request: Request) -> np.ndarray | None:
        name = {"canny11": "canny", "annotate_canny": "canny"}.get(request.kind, request.kind)
        if name not in ("canny", "scribble"):
            return None
        image = np.asarray(PIL.Image.open(request.path).convert("RGB"))
        spec = APPS[name]
        values = {p.name: p.default for p in spec.params}
        detected = control_map(spec, self.backend, image, request.resolution, None, values)
        return detected if request.kind == "annotate_canny" else spec.display(detected)


def check(request: Request, result, expected: Expected) -> str | None:
    """None if `result` is the answer to `request`, else what is wrong."""
    gallery = result if request.kind == "annotate_canny" else result[0]
    images = [np.asarray(PIL.Image.open(item["image"]).convert("RGB")) for item in gallery]
    count = 1 if request.kind == "annotate_canny" else (2 if request.kind == "multi" else 1) + request.samples
    if len(images) != count:
        return f"{len(images)} images, expected {count}"
    sizes = {im.shape[:2] for im in images}
    if sizes != {request.expected_size}:
        return f"sizes {sizes}, expected {request.expected_size}"
    if request.kind != "annotate_canny" and f"Seed used: **{request.seed}**" not in result[1]:
        return f"result line {result[1]!r} does not report seed {request.seed}"
    want = expected.app_map(request)
    if want is not None and not np.array_equal(images[0], want):
        return "the map is not the map of this request's input"
    return None


def server_rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def run_load(url: str, pid: int, users: int, requests: list[Request], warmup: int | None = None) -> Report:
    """Send `requests` from `users` gradio_client clients at once (each its own session); the server's RSS
    is read after the first `warmup` (default: `users`) requests and at the end."""
    from gradio_client import Client, handle_file

    warmup = users if warmup is None else warmup
    expected = Expected()
    report = Report()
    lock = threading.Lock()

    def serve(batch: list[Request]) -> None:
        todo: queue.Queue = queue.Queue()
        for request in batch:
            todo.put(request)

        def user() -> None:
            client = Client(url, verbose=False)
            while True:
                try:
                    request = todo.get_nowait()
                except queue.Empty:
                    return
                args, api_name = app_arguments(request, handle_file)
                start = time.monotonic()
                try:
                    result = client.predict(*args, api_name=api_name)
                    error = check(request, result, expected)
                except Exception as err:  # noqa: BLE001 - every failure is a lost request, reported
                    error = f"{type(err).__name__}: {err}"
                with lock:
                    report.outcomes.append(Outcome(request, time.monotonic() - start, error))

        threads = [threading.Thread(target=user, name=f"user-{k}") for k in range(min(users, len(batch)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    serve(requests[:warmup])
    report.rss_after_warmup = server_rss(pid)
    serve(requests[warmup:])
    report.rss_after = server_rss(pid)
    return report


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from tests.apps_server import start_server

    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--server-arg", action="append", default=[], help="an extra launch.py option (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-load-"))
    requests = make_requests(args.requests, folder)
    server = start_server("--app", "all", "--max-queue", str(max(64, args.users * 2)), *args.server_arg)
    try:
        started = time.monotonic()
        report = run_load(server.url, server.proc.pid, args.users, requests)
        wall = time.monotonic() - started
    finally:
        server.stop()
    for outcome in report.wrong:
        print(f"request {outcome.request.number} ({outcome.request.kind}): {outcome.error}")
    print(f"{args.users} users: {report.summary()}; {wall:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({"users": args.users, "requests": len(report.outcomes), "wrong": len(report.wrong),
                                         **report.percentiles(), "rss_after_warmup": report.rss_after_warmup,
                                         "rss_after": report.rss_after, "drift": report.drift, "wall_s": wall}, indent=1))
    return 1 if report.wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
