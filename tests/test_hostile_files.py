"""Hostile and broken weight files: each is refused with one CheckpointError that names the file and the problem,
nothing in it is executed or allocated at the size it declares, and a running SharedModel keeps its model.

Cases: truncation at many offsets (safetensors and PyTorch zip), single-bit flips of a safetensors header and of
every zip structure signature, absurd sizes (a 2^60-byte header, tensors ending past the file, storages of 8 GB
and 4 TB declared in zip and legacy pickles), pickles that would run code (legacy, zip, nested), and SD 2.x, SDXL
and LoRA files given as a base. The peak memory of the absurd cases is measured in a fresh process.
"""
from __future__ import annotations

import json
import pickle
import random
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cldm.checkpoint import CheckpointError, load_state_dict
from cldm.model import create_model, load_control
from cldm.shared_model import SharedModel
from tests.tiny import TINY_YAML, random_model
from weights.files import WeightFiles
from weights.table import WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
CONTROL = "control_model."


@pytest.fixture(scope="module")
def control():
    _, sd = random_model(seed=11)
    return {k: v.contiguous() for k, v in sd.items() if k.startswith(CONTROL)}


@pytest.fixture(scope="module")
def model():
    return create_model(TINY_YAML)


@pytest.fixture(scope="module")
def good_files(control, tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    save_file(control, folder / "good.safetensors")
    torch.save(control, folder / "good.pth")
    return folder


def refused(model, path: Path) -> str:
    """The one CheckpointError of loading `path` as a ControlNet; its message without the path."""
    with pytest.raises(CheckpointError) as info:
        load_control(model, path)
    assert type(info.value) is CheckpointError
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


def offsets(size: int, header_end: int) -> list[int]:
    """Many cut points: the first bytes, around the end of the header, spread over the data, the last bytes."""
    spread = [size * i // 24 for i in range(1, 24)]
    edges = [0, 1, 4, 7, 8, 9, 16, header_end - 1, header_end, header_end + 1, size - 22, size - 2, size - 1]
    return sorted({o for o in edges + spread if 0 <= o < size})


@pytest.mark.parametrize("name", ["good.safetensors", "good.pth"])
def test_truncated_at_many_offsets(tmp_path, model, good_files, name):
    data = (good_files / name).read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0] if name.endswith(".safetensors") else 64
    load_control(model, good_files / name)  # the whole file loads
    cuts = offsets(len(data), header_end)
    assert len(cuts) >= 30
    for cut in cuts:
        path = tmp_path / f"cut{cut}_{name}"
        path.write_bytes(data[:cut])
        problem = refused(model, path)
        assert re.search(r"truncated|corrupt|empty file|not a checkpoint", problem), (cut, problem)


def test_every_bit_flip_of_a_safetensors_header_is_caught(tmp_path, model, good_files):
    data = (good_files / "good.safetensors").read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    rng = random.Random(0)
    flips = [(i, bit) for i in range(8) for bit in range(8)]  # every bit of the header length
    flips += [(rng.randrange(8, header_end), rng.randrange(8)) for _ in range(400)]  # the JSON header
    path = tmp_path / "flipped.safetensors"
    kinds = set()
    for position, bit in flips:
        flipped = bytearray(data)
        flipped[position] ^= 1 << bit
        path.write_bytes(flipped)
        problem = refused(model, path)
        kinds.add(problem.split(":")[0].split(" (")[0])
    print(f"{len(flips)} header bit flips, problems reported: {sorted(kinds)[:8]}")


def test_bit_flips_in_zip_structures_are_caught(tmp_path, model, good_files):
    data = (good_files / "good.pth").read_bytes()
    signatures = [m.start() for sig in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06") for m in re.finditer(re.escape(sig), data)]
    with zipfile.ZipFile(good_files / "good.pth") as archive:
        assert len(signatures) >= 2 * len(archive.infolist()) + 1
    path = tmp_path / "flipped.pth"
    for position in signatures:
        for byte in range(4):
            flipped = bytearray(data)
            flipped[position + byte] ^= 1 << (position + byte) % 8
            path.write_bytes(flipped)
            assert re.search(r"corrupt|truncated|not a checkpoint", refused(model, path))


def absurd_files(folder: Path) -> dict[str, Path]:
    """Files declaring sizes far beyond themselves."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    save_file({"a": torch.ones(10)}, folder / "small.safetensors")
    small = (folder / "small.safetensors").read_bytes()
    length = struct.unpack("<Q", small[:8])[0]
    files["header_length_2^60"] = folder / "header_length_2^60.safetensors"
    files["header_length_2^60"].write_bytes(struct.pack("<Q", 2 ** 60) + small[8:])
    header = json.loads(small[8:8 + length])
    header["a"] = {"dtype": "F32", "shape": [2 ** 48], "data_offsets": [0, 2 ** 50]}
    raw = json.dumps(header).encode()
    files["tensor_past_the_end"] = folder / "tensor_past_the_end.safetensors"
    files["tensor_past_the_end"].write_bytes(struct.pack("<Q", len(raw)) + raw + small[8 + length:])
    header["a"] = {"dtype": "F32", "shape": [2 ** 31, 2 ** 31], "data_offsets": [0, 40]}
    raw = json.dumps(header).encode()
    files["shape_2^62"] = folder / "shape_2^62.safetensors"
    files["shape_2^62"].write_bytes(struct.pack("<Q", len(raw)) + raw + small[8 + length:])
    torch.save({"w": torch.ones(1000)}, folder / "small.pth")
    torch.save({"w": torch.ones(1000)}, folder / "small_legacy.pth", _use_new_zipfile_serialization=False)
    for name, numel in (("8GB", 2 ** 31 - 1), ("4TB", 2 ** 40)):
        declared = b"\x8a\x08" + numel.to_bytes(8, "little")  # LONG1: the storage's and the tensor's size
        with zipfile.ZipFile(folder / "small.pth") as src, zipfile.ZipFile(folder / f"zip_{name}.pth", "w") as dst:
            for item in src.namelist():
                body = src.read(item)
                dst.writestr(item, body.replace(b"M\xe8\x03", declared) if item.endswith("data.pkl") else body)
        files[f"zip_storage_{name}"] = folder / f"zip_{name}.pth"
        legacy = (folder / "small_legacy.pth").read_bytes().replace(b"M\xe8\x03", declared)
        files[f"legacy_storage_{name}"] = folder / f"legacy_{name}.pth"
        files[f"legacy_storage_{name}"].write_bytes(legacy)
    return files


MEASURE = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from cldm.checkpoint import CheckpointError, load_state_dict
files = json.loads(sys.argv[2])
report = {}
for name, path in files.items():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        load_state_dict(path)
        outcome = "LOADED"
    except CheckpointError as e:
        outcome = str(e)
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    report[name] = {"seconds": time.perf_counter() - start, "peak_growth_mb": growth, "outcome": outcome}
print(json.dumps(report))
"""


def test_absurd_sizes_are_refused_without_allocating_them(tmp_path):
    files = absurd_files(tmp_path)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), json.dumps({k: str(v) for k, v in files.items()})],
                         capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for name, entry in report.items():
        print(f"{name}: {entry['seconds'] * 1000:.1f} ms, peak memory +{entry['peak_growth_mb']:.1f} MB: "
              f"{entry['outcome'].split(': ', 1)[-1][:110]}")
        assert entry["outcome"].startswith(str(files[name]) + ": "), (name, entry["outcome"])
        assert entry["peak_growth_mb"] < 64, (name, entry)


class Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def code_files(folder: Path, marker: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"legacy.ckpt": folder / "legacy.ckpt", "zip.pth": folder / "zip.pth", "nested.pt": folder / "nested.pt",
             "raw_pickle.bin": folder / "raw_pickle.bin"}
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": Payload(marker)}, files["legacy.ckpt"],
               _use_new_zipfile_serialization=False)
    torch.save({"w": torch.ones(2), "hook": Payload(marker)}, files["zip.pth"])
    torch.save({"state_dict": {"input_hint_block.0.weight": torch.ones(1), "inner": [Payload(marker)]}}, files["nested.pt"])
    files["raw_pickle.bin"].write_bytes(pickle.dumps({"w": Payload(marker)}, protocol=2))
    return files


def test_pickles_that_would_run_code_are_not_run(tmp_path, model):
    marker = tmp_path / "marker"
    files = code_files(tmp_path / "files", marker)
    for name, path in files.items():
        problem = refused(model, path)
        assert "refusing to unpickle" in problem and "exec" in problem, (name, problem)
        assert not marker.exists(), f"{name}: the payload ran"
    # The payloads are live: plain unpickling (in another process) runs them.
    for name, load in (("raw_pickle.bin", "pickle.load(open({!r}, 'rb'))"), ("zip.pth", "torch.load({!r}, weights_only=False)")):
        code = "import pickle, torch; " + load.format(str(files[name]))
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)
        assert marker.read_text() == "ran", name
        marker.unlink()


WRONG_BASES = {
    "sd2.safetensors": ({"cond_stage_model.model.token_embedding.weight": torch.zeros(8, 4),
                         "model.diffusion_model.out.2.weight": torch.zeros(4, 8, 3, 3)}, "Stable Diffusion 2.x"),
    "sdxl.safetensors": ({"conditioner.embedders.1.model.positional_embedding": torch.zeros(77, 8),
                          "model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 16)}, "SDXL"),
    "lora.safetensors": ({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
                          "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)}, "a LoRA"),
}


@pytest.mark.parametrize("name", WRONG_BASES)
def test_wrong_models_given_as_base(tmp_path, name):
    tensors, expected = WRONG_BASES[name]
    save_file(tensors, tmp_path / name)
    manager = SharedModel(files=WeightFiles([tmp_path], offline=True), device="cpu", config=TINY_YAML, base=tmp_path / name)
    with pytest.raises(CheckpointError) as info:
        manager._base()
    assert str(info.value).startswith(f"{tmp_path / name}: is ") and expected in str(info.value), str(info.value)


@pytest.fixture
def running(tmp_path, control):
    """A SharedModel with its base and the canny weights loaded, next to broken files for other keys."""
    _, sd = random_model(seed=12)
    save_file({k: v.contiguous() for k, v in sd.items() if not k.startswith(CONTROL) and k.count(".")},
              tmp_path / WEIGHTS["sd15"].basename)
    save_file({k[len(CONTROL):]: v.half() for k, v in control.items()}, tmp_path / WEIGHTS["cn10_canny_fp16"].basename)
    manager = SharedModel(files=WeightFiles([tmp_path], offline=True), device="cpu", config=TINY_YAML, cache_size=0)
    with manager.activate("cn10_canny_fp16"):
        pass
    return manager, tmp_path


@pytest.mark.parametrize("breakage", ["truncated", "code", "absurd", "lora", "wrong_shapes"])
def test_a_running_model_keeps_its_weights_after_a_failed_load(running, control, breakage):
    manager, folder = running
    path = folder / WEIGHTS["cn10_hed_fp16"].basename
    good = (folder / WEIGHTS["cn10_canny_fp16"].basename).read_bytes()
    if breakage == "truncated":
        path.write_bytes(good[: len(good) * 2 // 3])
    elif breakage == "code":
        path = folder / WEIGHTS["cn11_softedge"].basename  # a .pth key
        torch.save({"w": Payload(folder / "marker")}, path)
    elif breakage == "absurd":
        path.write_bytes(struct.pack("<Q", 2 ** 60) + good[8:])
    elif breakage == "lora":
        save_file(WRONG_BASES["lora.safetensors"][0], path)
    else:
        save_file({k[len(CONTROL):]: v[..., :1].contiguous() if v.ndim == 4 else v for k, v in control.items()}, path)
    key = "cn11_softedge" if breakage == "code" else "cn10_hed_fp16"
    model = manager._model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swaps = manager.control_swaps
    with pytest.raises(CheckpointError, match=re.escape(path.name)):
        with manager.activate(key):
            pass
    assert manager._model is model and manager.active == "cn10_canny_fp16" and manager.base_loads == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with manager.activate("cn10_canny_fp16"):  # no re-read, no swap: the weights never left
        pass
    assert manager.control_swaps == swaps and manager.control_loads == {"cn10_canny_fp16": 1}
    assert not (folder / "marker").exists()


def test_load_state_dict_names_every_problem_once(tmp_path):
    """A directory, a missing file and an empty file: the path, then one sentence."""
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for path, problem in ((tmp_path, "is a folder"), (tmp_path / "none.pth", "no such file"), (empty, "empty file")):
        with pytest.raises(CheckpointError) as info:
            load_state_dict(path)
        assert str(info.value) == f"{path}: {str(info.value).split(': ', 1)[1]}" and problem in str(info.value)
