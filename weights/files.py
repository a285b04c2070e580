"""Finding weight files: local folders first, else a one-time download with huggingface_hub.

    files = WeightFiles(search_dirs=["models"], offline=False)
    path = files.resolve("cn10_canny")

The folders searched, in order: the caller's `search_dirs` (e.g. `--models-dir`), `$ANNOTATOR_CKPTS`,
`models/`, `annotator/ckpts/`; then the Hugging Face cache, asking no server. Every published copy of the
weights counts (`weights.table.sources`: for an fp16 ControlNet also the official file and the diffusers
repository). A file found nowhere is downloaded once into the Hugging Face cache with `hf_hub_download`
(progress; a transfer that breaks off is resumed by it with a range request), unless offline. When it cannot be
had, `WeightsUnavailable` says which file, from which repository, and where to put it.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from weights.table import ANNOTATORS, WEIGHTS, sources

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
ANNOTATOR_CKPTS = REPO_ROOT / "annotator" / "ckpts"
# File names that say nothing about the weights (diffusers layouts): looked for in a folder named like the repo.
GENERIC_NAMES = ("diffusion_pytorch_model", "model.", "pytorch_model")


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
        """Path of weight file `key` (a key of WEIGHTS). Any published copy of the same weights already on disk
        or in the hub cache is used as is (`weights.table.sources`); else the table's file is downloaded."""
        spec = WEIGHTS[key]
        home = ANNOTATOR_CKPTS if spec.repo == ANNOTATORS else None
        return self._find(sources(key), [(spec.repo, spec.filename)], spec.role, spec.basename, spec.url, home)

    def resolve_repo(self, repo: str, filenames: Sequence[str], role: str) -> Path:
        """A file of a hub repository outside the table (e.g. a part of a diffusers-format model): the first of
        `filenames` (alternatives, e.g. `.safetensors` then `.bin`) found on disk or in the hub cache, else the
        first the hub has, downloaded."""
        wanted = [(repo, name) for name in filenames]
        return self._find(wanted, wanted, role, filenames[0], f"https://huggingface.co/{repo}", None)

    def _find(self, on_disk: list[tuple[str, str]], download: list[tuple[str, str]], role: str, name: str, url: str,
              home: Path | None) -> Path:
        """The first of `on_disk` (repo, filename) in a local folder or the hub cache, else the first of `download`
        the hub has."""
        dirs = self.local_dirs()
        for repo, filename in on_disk:
            for d in dirs:
                for candidate in _local_copies(d, repo, filename, primary=(repo, filename) == download[0]):
                    if candidate.is_file():
                        return candidate
        cached = _in_hub_cache(on_disk)
        if cached is not None:
            return cached
        offline = hub_offline_env() if self.offline is None else self.offline
        unreachable = None if offline else self.hub.problem()
        err: Exception | None = None
        if not offline and unreachable is None:
            from huggingface_hub import hf_hub_download

            for repo, filename in download:
                try:
                    # huggingface_hub shows progress, and resumes a transfer that breaks off from where it stopped.
                    return Path(hf_hub_download(repo, filename))
                except Exception as e:  # 404, network, interrupted download, ...
                    err = e
                    if not _entry_not_found(e):
                        break
        looked = ", ".join(str(d) for d in dirs)
        home = home or (dirs[0] if self.search_dirs else MODELS_DIR)
        if offline:
            reason = "offline mode is on and it is not in the hub cache"
        elif unreachable:
            reason = f"the hub cannot be reached ({unreachable}) and it is not in the hub cache"
        else:
            reason = f"download failed ({type(err).__name__}: {err})"
        raise WeightsUnavailable(
            f"{role}: weight file '{name}' is missing. Looked in: {looked}; {reason}. "
            f"Download it from {url} (repo '{download[0][0]}') and put it in {home}."
        ) from err


def _local_copies(folder: Path, repo: str, filename: str, primary: bool) -> list[Path]:
    """Where a copy of `repo`'s `filename` may lie in a local folder: by its file name (always for the file to
    download), or, for the generic names of the diffusers layouts, at its path in a folder named like the repo."""
    basename = filename.rsplit("/", 1)[-1]
    if "/" not in filename.removeprefix("models/") and not basename.startswith(GENERIC_NAMES):
        return [folder / basename]
    return [folder / repo.rsplit("/", 1)[-1] / filename] + ([folder / basename] if primary else [])


def _in_hub_cache(wanted: list[tuple[str, str]]) -> Path | None:
    """The first of `wanted` already in the Hugging Face cache (asks no server)."""
    from huggingface_hub import try_to_load_from_cache

    for repo, filename in wanted:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _entry_not_found(err: Exception) -> bool:
    """The repository has no such file (try the next alternative), as opposed to a failed download."""
    return any(cls.__name__ == "EntryNotFoundError" for cls in type(err).__mro__)
