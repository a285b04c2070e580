"""Where the pages' result PNGs are written: each run's files in a folder of a private temporary directory
(the gallery hands them out as they are, settings chunk included; runs older than an hour are removed), and,
with `--outputs DIR`, a copy of every result in DIR, numbered like the WebUI's (`00042-canny-12345-0.png`)."""
from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apps.png_info import ImageInfo, save_png

KEEP_SECONDS = 3600
NUMBERED = re.compile(r"^(\d{5})-")


@dataclass(frozen=True)
class Result:
    """One image of a run: its pixels, its settings and its label in the file name ("map", "0", …)."""

    image: np.ndarray
    info: ImageInfo | None
    label: str


class ResultFiles:
    def __init__(self, outputs: Path | None = None, keep_seconds: float = KEEP_SECONDS):
        self.outputs = Path(outputs) if outputs else None
        self.keep_seconds = keep_seconds
        self._root: Path | None = None
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="controlnet-results-"))
                atexit.register(shutil.rmtree, self._root, True)
            return self._root

    def save(self, app: str, seed: int, results: Sequence[Result]) -> list[Path]:
        """Write one run's images (named `<app>-<seed>-<label>.png`); returns their paths in the temporary
        folder, in order; copies them to --outputs when it is set."""
        self._prune()
        run = Path(tempfile.mkdtemp(dir=self.root))
        paths = [save_png(r.image, run / f"{app}-{seed}-{r.label}.png", r.info) for r in results]
        if self.outputs is not None:
            with self._lock:
                self.outputs.mkdir(parents=True, exist_ok=True)
                number = 1 + max((int(m.group(1)) for p in self.outputs.iterdir() if (m := NUMBERED.match(p.name))),
                                 default=-1)
                for path in paths:
                    shutil.copyfile(path, self.outputs / f"{number:05d}-{path.name}")
        return paths

    def _prune(self) -> None:
        cutoff = time.time() - self.keep_seconds
        for run in self.root.iterdir():
            try:
                if run.stat().st_mtime < cutoff:
                    shutil.rmtree(run, ignore_errors=True)
            except FileNotFoundError:
                pass
