"""SHA-256 of weight files, computed once per file per process.

The short forms other tools show come from it: the WebUI's "Model hash" is its first 10 hex digits (AutoV2),
sd-webui-controlnet shows the first 8 after a ControlNet's name. A file in the Hugging Face cache is a link to
a blob named by its SHA-256, so its hash costs nothing; any other file is read once (about 2 s per GB).
"""
from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

CHUNK = 1 << 24
_HEX64 = re.compile(r"[0-9a-f]{64}")
_known: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (64 hex digits) of the file at `path`, remembered by (real path, size, modification time)."""
    real = Path(path).resolve()
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _known:
            return _known[key]
    if real.parent.name == "blobs" and _HEX64.fullmatch(real.name):  # the hub cache names blobs by their hash
        digest = real.name
    else:
        sha = hashlib.sha256()
        with open(real, "rb") as f:
            while block := f.read(CHUNK):
                sha.update(block)
        digest = sha.hexdigest()
    with _lock:
        _known[key] = digest
    return digest


def short_hash(path: str | Path, digits: int = 10) -> str:
    return file_sha256(path)[:digits]
