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
from dataclasses import dataclass
from pathlib import Path

from weights.table import ANNOTATORS, WEIGHTS

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
ANNOTATOR_CKPTS = REPO_ROOT / "annotator" / "ckpts"


class WeightsUnavailable(FileNotFoundError):
    """A weight file is neither on disk nor downloadable; the message tells the user what to do."""


def hub_offline_env() -> bool:
    """Hugging Face's own switch (HF_HUB_OFFLINE), the default when no `offline` is given."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class WeightFiles:
    """Where weight files are looked for (`search_dirs` first) and whether downloads are allowed."""

    search_dirs: tuple[Path, ...] = ()
    offline: bool | None = None  # None: follow HF_HUB_OFFLINE

    def __post_init__(self) -> None:
        object.__setattr__(self, "search_dirs", tuple(Path(d) for d in self.search_dirs))

    def local_dirs(self) -> list[Path]:
        dirs = list(self.search_dirs)
        if os.environ.get("ANNOTATOR_CKPTS"):
            dirs.append(Path(os.environ["ANNOTATOR_CKPTS"]))
        return dirs + [MODELS_DIR, ANNOTATOR_CKPTS]

    def resolve(self, key: str) -> Path:
        """Path of weight file `key` (a key of WEIGHTS): local copy first, else a hub download."""
        spec = WEIGHTS[key]
        dirs = self.local_dirs()
        for d in dirs:
            candidate = d / spec.basename
            if candidate.is_file():
                return candidate
        offline = hub_offline_env() if self.offline is None else self.offline
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(spec.repo, spec.filename, local_files_only=offline))
        except Exception as err:  # offline, no network, 404, interrupted download, ...
            looked = ", ".join(str(d) for d in dirs)
            home = ANNOTATOR_CKPTS if spec.repo == ANNOTATORS else (dirs[0] if self.search_dirs else MODELS_DIR)
            reason = ("offline mode is on and it is not in the hub cache" if offline
                      else f"download failed ({type(err).__name__}: {err})")
            raise WeightsUnavailable(
                f"{spec.role}: weight file '{spec.basename}' is missing. Looked in: {looked}; {reason}. "
                f"Download it from {spec.url} (repo '{spec.repo}') and put it in {home}."
            ) from err
