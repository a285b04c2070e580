"""Finding weight files: local folders first, else a one-time download with huggingface_hub.

    files = WeightFiles(search_dirs=["models"], offline=False)
    path = files.resolve("cn10_canny")

The folders searched, in order: the caller's `search_dirs` (e.g. `--models-dir`), `$ANNOTATOR_CKPTS`,
`models/`, `annotator/ckpts/`. A file in none of them is downloaded once into the Hugging Face cache (with
progress, resumable), unless offline. When it cannot be had, `WeightsUnavailable` says which file, from which
repository, and where to put it.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from weights.table import ANNOTATORS, WEIGHTS

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
ANNOTATOR_CKPTS = REPO_ROOT / "annotator" / "ckpts"


class WeightsUnavailable(FileNotFoundError):
    """A weight file is neither on disk nor downloadable; the message tells the user what to do."""


def hub_offline_env() -> bool:
    """Hugging Face's own switch (HF_HUB_OFFLINE), the default when no `offline` is given."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


class HubReachability:
    """Whether the hub answers at all, asked with one short TCP connect and remembered for a while: without it a
    machine with no network waits about half a minute of huggingface_hub's retries on every missing file."""

    def __init__(self, timeout: float = 3.0, remember: float = 300.0):
        self.timeout, self.remember = timeout, remember
        self.probes = 0
        self._known: tuple[float, str | None] | None = None  # (when, None if reachable else why not)
        self._lock = threading.Lock()

    def problem(self) -> str | None:
        """None when the hub's host accepts a connection (or a proxy is set: huggingface_hub will use it), else
        why it cannot be reached."""
        if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
            return None
        with self._lock:
            if self._known is not None and time.monotonic() - self._known[0] < self.remember:
                return self._known[1]
            from huggingface_hub import constants

            endpoint = urlparse(constants.ENDPOINT)
            port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
            self.probes += 1
            try:
                socket.create_connection((endpoint.hostname, port), timeout=self.timeout).close()
                why = None
            except OSError as err:
                why = f"{endpoint.hostname}: {type(err).__name__}: {err}"
            self._known = (time.monotonic(), why)
            return why


@dataclass(frozen=True)
class WeightFiles:
    """Where weight files are looked for (`search_dirs` first) and whether downloads are allowed."""

    search_dirs: tuple[Path, ...] = ()
    offline: bool | None = None  # None: follow HF_HUB_OFFLINE
    hub: HubReachability = field(default_factory=HubReachability, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "search_dirs", tuple(Path(d) for d in self.search_dirs))

    def local_dirs(self) -> list[Path]:
        """The folders searched, in order, each once."""
        dirs = list(self.search_dirs)
        if os.environ.get("ANNOTATOR_CKPTS"):
            dirs.append(Path(os.environ["ANNOTATOR_CKPTS"]))
        unique: dict[Path, Path] = {}
        for d in dirs + [MODELS_DIR, ANNOTATOR_CKPTS]:
            unique.setdefault(d.resolve(), d)
        return list(unique.values())

    def resolve(self, key: str) -> Path:
        """Path of weight file `key` (a key of WEIGHTS): local copy first, else a hub download."""
        spec = WEIGHTS[key]
        dirs = self.local_dirs()
        for d in dirs:
            candidate = d / spec.basename
            if candidate.is_file():
                return candidate
        offline = hub_offline_env() if self.offline is None else self.offline
        unreachable = None if offline else self.hub.problem()
        try:
            from huggingface_hub import hf_hub_download

            # Unreachable hub: the cache only (a file downloaded earlier still works), no retries.
            return Path(hf_hub_download(spec.repo, spec.filename, local_files_only=offline or unreachable is not None))
        except Exception as err:  # offline, no network, 404, interrupted download, ...
            looked = ", ".join(str(d) for d in dirs)
            home = ANNOTATOR_CKPTS if spec.repo == ANNOTATORS else (dirs[0] if self.search_dirs else MODELS_DIR)
            if offline:
                reason = "offline mode is on and it is not in the hub cache"
            elif unreachable:
                reason = f"the hub cannot be reached ({unreachable}) and it is not in the hub cache"
            else:
                reason = f"download failed ({type(err).__name__}: {err})"
            raise WeightsUnavailable(
                f"{spec.role}: weight file '{spec.basename}' is missing. Looked in: {looked}; {reason}. "
                f"Download it from {spec.url} (repo '{spec.repo}') and put it in {home}."
            ) from err
