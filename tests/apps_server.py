"""Servers and inputs for the app tests: `python launch.py … --tiny` on 127.0.0.1 and a free port.

`shared_server(args)` starts one server per argument list per test process (the browser and the API tests
share the `--app all` one) and stops it when the process exits.
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
START_TIMEOUT = 240
EXPECT_TIMEOUT_MS = 30_000

# Under `pytest -n N` (pytest-xdist, `--dist loadgroup`) the tests that start app servers run in two groups, each
# in one worker and in file order: those that drive Chromium and those that call the API. A group's files share
# their servers (one per test process), and a server with its browser needs about a core of its own, so the
# timing-sensitive page tests never compete with a second page. The other workers run the in-process tests.
BROWSER_SERVER_TESTS = pytest.mark.xdist_group("browser_servers")
API_SERVER_TESTS = pytest.mark.xdist_group("api_servers")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Server:
    args: tuple[str, ...]
    url: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(*args: str, tiny: bool = True, timeout: float = START_TIMEOUT,
                 env: dict[str, str | None] | None = None) -> Server:
    """`python launch.py *args [--tiny] --port N`, waiting until the page answers; `env` changes the server's
    environment (None removes a variable)."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="apps-server-", suffix=".log")[1])
    environment = server_env()
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "launch.py", *args, *(["--tiny"] if tiny else []), "--port", str(port)], cwd=ROOT,
                                env=environment, stdout=out, stderr=subprocess.STDOUT)
    server = Server(tuple(args), f"http://127.0.0.1:{port}/", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {args} exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url, timeout=5) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"server {args} did not answer within {timeout} s:\n{server.log_tail()}")


_SERVERS: dict[tuple[str, ...], Server] = {}


def shared_server(*args: str) -> Server:
    if args not in _SERVERS or _SERVERS[args].proc.poll() is not None:
        _SERVERS[args] = start_server(*args)
    return _SERVERS[args]


def shared_client(*args: str):
    """A gradio_client Client of `shared_server(*args)` (one per server)."""
    from gradio_client import Client

    server = shared_server(*args)
    if server.url not in _CLIENTS:
        _CLIENTS[server.url] = Client(server.url, verbose=False)
    return _CLIENTS[server.url]


_CLIENTS: dict = {}


@atexit.register
def _stop_all() -> None:
    for server in _SERVERS.values():
        server.stop()


# ---- inputs -------------------------------------------------------------------------------------------------------


def synthetic_image(height: int = 256, width: int = 320) -> np.ndarray:
    """A deterministic RGB picture with edges, lines and blobs (dark strokes on a light background too)."""
    img = np.full((height, width, 3), 235, np.uint8)
    cv2.rectangle(img, (20, 30), (width // 2, height - 40), (200, 60, 40), -1)
    cv2.circle(img, (int(width * 0.7), height // 2), height // 5, (40, 90, 200), -1)
    for k in range(5):
        cv2.line(img, (0, 20 + 45 * k), (width - 1, 10 + 50 * k), (20, 20, 20), 3)
    return img


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1] if image.ndim == 3 else image)):
        raise RuntimeError(f"could not write {path}")
    return path


def input_image_path(folder: Path, height: int = 256, width: int = 320) -> Path:
    """A small input: the repository's test_imgs/ picture when present (resized), else a synthetic one."""
    found = sorted(p for p in (ROOT / "test_imgs").glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if found:
        image = cv2.imread(str(found[0]), cv2.IMREAD_COLOR)
        if image is not None:
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)[..., ::-1]
            return write_png(folder / "input.png", image)
    return write_png(folder / "input.png", synthetic_image(height, width))


def bad_inputs(folder: Path) -> dict[str, Path]:
    """Uploads the server must refuse: not an image, too large, 16-bit."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not image data" * 10)
    large = write_png(folder / "large.png", np.zeros((64, 5000, 3), np.uint8))
    sixteen = folder / "sixteen_bit.png"
    cv2.imwrite(str(sixteen), np.full((64, 64), 40000, np.uint16))
    return {"corrupt": corrupt, "too large": large, "16-bit": sixteen}


def require_browser() -> str:
    """The Chromium path; a missing browser is an error, never a skip. Also gives Playwright's assertions
    `EXPECT_TIMEOUT_MS` where a test names no timeout: their default, 5 s, is shorter than a page event can take
    on a busy 2-core machine (the Fast switch's page-load event took longer under `pytest -n 2`)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        raise RuntimeError(f"{CHROMIUM} is missing: install it with `sudo apt-get install -y chromium`")
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
