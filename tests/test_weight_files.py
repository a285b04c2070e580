"""Where weight files come from: what is already in the Hugging Face cache is used without asking the hub (any
published copy of the same weights), a transfer that breaks off resumes where it stopped, a damaged copy in the
cache is reported with the file to delete. The hub is a local stand-in (tests/fake_hub.py); no network."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants
from safetensors.torch import save_file

from cldm.checkpoint import CheckpointError
from cldm.model import create_model, load_control
from cldm.shared_model import SharedModel
from tests.fake_hub import FakeHub, put_in_cache
from tests.tiny import TINY_YAML, random_model
from weights.files import WeightFiles, WeightsUnavailable
from weights.table import CONTROLNETS, WEIGHTS, sources

ROOT = Path(__file__).resolve().parents[1]
CONTROL = "control_model."


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail
    return cache


def test_every_controlnet_key_has_its_file_and_copies():
    for key in CONTROLNETS:
        spec = WEIGHTS[key]
        assert spec.size_mb > 0 and spec.role.startswith("ControlNet 1.")
        if key.endswith("_fp16"):
            assert spec.original in CONTROLNETS and spec.size_mb < WEIGHTS[spec.original].size_mb
            assert spec.filename.endswith(".safetensors") and "fp16" in spec.filename
        found = sources(key)
        assert found[0] == (spec.repo, spec.filename) and len(found) == len(set(found)) >= 2


def test_a_file_in_the_hub_cache_is_used_without_asking_the_hub(hub_cache, tmp_path):
    link = put_in_cache(hub_cache, WEIGHTS["cn10_canny_fp16"].repo, WEIGHTS["cn10_canny_fp16"].filename, b"weights")
    files = WeightFiles([tmp_path / "empty"], offline=False)
    assert files.resolve("cn10_canny_fp16") == link
    assert files.hub.probes == 0  # no connection was even tried


@pytest.mark.parametrize("copy", [1, 2], ids=["official_pth", "diffusers_repo"])
def test_another_copy_of_the_same_weights_in_the_cache_is_used(hub_cache, tmp_path, copy):
    repo, filename = sources("cn10_depth_fp16")[copy]
    link = put_in_cache(hub_cache, repo, filename, b"weights")
    files = WeightFiles([tmp_path / "empty"], offline=False)
    assert files.resolve("cn10_depth_fp16") == link and files.hub.probes == 0
    # The original choice takes the diffusers copy (the same fp32 numbers) but never the fp16 file.
    put_in_cache(hub_cache, WEIGHTS["cn11_seg_fp16"].repo, WEIGHTS["cn11_seg_fp16"].filename, b"fp16")
    with pytest.raises(WeightsUnavailable, match="the hub cannot be reached"):
        files.resolve("cn11_seg")


def test_a_damaged_copy_in_the_cache_names_the_file_to_delete(hub_cache, tmp_path):
    _, sd = random_model(seed=2)
    save_file({k[len(CONTROL):]: v.half().contiguous() for k, v in sd.items() if k.startswith(CONTROL)},
              tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    spec = WEIGHTS["cn10_hed_fp16"]
    link = put_in_cache(hub_cache, spec.repo, spec.filename, data[: len(data) - 1000])  # an interrupted copy
    blob = link.resolve()
    files = WeightFiles([tmp_path / "empty"], offline=True)
    with pytest.raises(CheckpointError) as err:
        load_control(create_model(TINY_YAML), files.resolve("cn10_hed_fp16"))
    message = str(err.value)
    assert message.startswith(f"{link}: truncated: tensor ")
    assert f"It is a copy in the Hugging Face cache: delete {blob} (and the link {link}) and it will be downloaded again" in message
    # The same through the shared model, which keeps serving.
    base = {k: v.contiguous() for k, v in sd.items() if not k.startswith(CONTROL) and k.count(".")}
    save_file(base, tmp_path / WEIGHTS["sd15"].basename)
    manager = SharedModel(files=WeightFiles([tmp_path], offline=True), device="cpu", config=TINY_YAML)
    with pytest.raises(CheckpointError, match="delete .* and it will be downloaded again"):
        with manager.activate("cn10_hed_fp16"):
            pass
    blob.unlink()
    link.unlink()
    put_in_cache(hub_cache, spec.repo, spec.filename, data)
    with manager.activate("cn10_hed_fp16"):
        pass


DOWNLOAD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from weights.files import WeightFiles
path = WeightFiles(offline=False).resolve(sys.argv[2])
print(json.dumps({"path": str(path)}))
"""


def download(hub: FakeHub, cache: Path, key: str) -> subprocess.CompletedProcess:
    """`WeightFiles.resolve(key)` in a fresh process whose huggingface_hub talks to `hub` (it reads its endpoint
    and cache at import)."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "home"),
           "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ANNOTATOR_CKPTS"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-c", DOWNLOAD, str(ROOT), key], env=env, capture_output=True, text=True,
                          timeout=120, cwd=cache.parent)


def test_an_interrupted_transfer_resumes_where_it_stopped(tmp_path):
    """The connection drops after 15 MB of 25 MB: huggingface_hub asks for the rest (a Range request from the
    last chunk it wrote) instead of starting again, and the file is complete. A second resolve finds
    it in the cache without a request."""
    data = os.urandom(25_000_000)
    spec = WEIGHTS["cn11_tile_fp16"]
    hub = FakeHub({(spec.repo, spec.filename): data}, cut_first_at=15_000_000)
    try:
        result = download(hub, tmp_path / "cache", "cn11_tile_fp16")
        assert result.returncode == 0, result.stderr[-2000:]
        path = Path(json.loads(result.stdout.strip().splitlines()[-1])["path"])
        assert path.read_bytes() == data
        gets = [r for r in hub.file_requests() if r[0] == "GET"]
        print(f"requests: {hub.file_requests()}")
        assert len(gets) == 2 and gets[0][2] is None and gets[1][2].startswith("bytes=")
        resumed_at = int(gets[1][2].split("=")[1].rstrip("-"))
        assert 0 < resumed_at <= 15_000_000  # from the last chunk written (huggingface_hub 2.4: 10 MB chunks)
        assert not list((tmp_path / "cache").rglob("*.incomplete"))
        asked = len(hub.file_requests())
        again = download(hub, tmp_path / "cache", "cn11_tile_fp16")
        assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["path"] == str(path)
        assert len(hub.file_requests()) == asked
    finally:
        hub.close()


def test_a_missing_file_on_the_hub_is_named(tmp_path):
    hub = FakeHub({})
    try:
        result = download(hub, tmp_path / "cache", "cn10_seg_fp16")
        assert result.returncode != 0
        assert "ControlNet 1.0 segmentation (fp16): weight file 'control_seg-fp16.safetensors' is missing" in result.stderr
        assert "download failed" in result.stderr
    finally:
        hub.close()


def test_a_plain_copy_in_the_cache_is_named_too(tmp_path):
    """Where the cache holds copies instead of links (no symlinks), the snapshot file itself is to delete."""
    from cldm.checkpoint import hub_cache_hint

    copy = tmp_path / "hub" / "models--owner--name" / "snapshots" / ("b" * 40) / "w.safetensors"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"x")
    assert hub_cache_hint(copy) == f". It is a copy in the Hugging Face cache: delete {copy} and it will be downloaded again"
    assert hub_cache_hint(tmp_path / "elsewhere.safetensors") == ""
