"""A Hugging Face cache written by hand, and a local stand-in for the hub's file server, for tests that must not
touch the network.

    put_in_cache(cache_dir, "owner/name", "file.safetensors", data)     # as huggingface_hub lays it out
    hub = FakeHub({("owner/name", "file.safetensors"): data}, cut_first_at=15_000_000)
    ... HF_ENDPOINT=hub.url ...; hub.requests                           # [(method, path, Range header)]
"""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "a" * 40


def put_in_cache(cache_dir: Path, repo: str, filename: str, data: bytes) -> Path:
    """Write `data` as `repo`'s `filename` in a hub cache: the blob, the snapshot link, refs/main. Returns the link."""
    root = Path(cache_dir) / ("models--" + repo.replace("/", "--"))
    blob = root / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = root / "snapshots" / COMMIT / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(blob)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return link


class FakeHub:
    """Serves `files` ({(repo, filename): bytes}) at /<repo>/resolve/main/<filename> (HEAD and GET with Range),
    like the hub does for a file outside Xet storage. `cut_first_at`: the first GET sends that many bytes of the
    body, then drops the connection."""

    def __init__(self, files: dict[tuple[str, str], bytes], cut_first_at: int | None = None):
        self.files, self.cut_first_at = files, cut_first_at
        self.requests: list[tuple[str, str, str | None]] = []
        self._gets = 0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _find(self) -> bytes | None:
                repo, sep, filename = self.path.partition("/resolve/main/")
                return hub.files.get((repo.lstrip("/"), filename)) if sep else None

            def _start(self, data: bytes | None, status: int, length: int, extra: dict[str, str] | None = None):
                self.send_response(status if data is not None else 404)
                if data is not None:
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                else:
                    self.send_header("X-Error-Code", "EntryNotFound")
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(length if data is not None else 0))
                self.end_headers()

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path, None))
                data = self._find()
                self._start(data, 200, len(data or b""))

            def do_GET(self):
                wanted = self.headers.get("Range")
                hub.requests.append(("GET", self.path, wanted))
                data = self._find()
                if data is None:
                    self._start(None, 404, 0)
                    return
                start = int(wanted.split("=")[1].split("-")[0]) if wanted else 0
                body = data[start:]
                extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if wanted else {}
                self._start(data, 206 if wanted else 200, len(body), extra)
                hub._gets += 1
                if hub.cut_first_at is not None and hub._gets == 1:
                    self.wfile.write(body[:hub.cut_first_at])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def file_requests(self) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if "/resolve/" in r[1]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
