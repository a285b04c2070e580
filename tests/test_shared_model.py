"""cldm.shared_model.SharedModel: one base per process, control weights swapped in with an LRU cache, clear errors
for missing or broken files, the tiny random mode. Real-file paths use the tiny config with files written here."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from cldm.checkpoint import CheckpointError
from cldm.shared_model import TINY_CONFIG, SharedModel, pick_device, pick_dtype
from weights.files import WeightFiles, WeightsUnavailable
from weights.table import WEIGHTS
from cldm.model import create_model


def control_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.control_model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_base_is_loaded_once_and_controls_are_swapped():
    manager = SharedModel(tiny=True, device="cpu", cache_size=2)
    with manager.activate("cn10_canny") as model:
        canny = control_weights(model)
    with manager.activate("cn10_hed") as model:
        hed = control_weights(model)
        assert model is manager._model
    assert not same(canny, hed)  # each key has its own (seeded) weights
    with manager.activate("cn10_canny") as model:
        assert same(control_weights(model), canny)  # restored from the cache, bit for bit
    state = manager.status()
    assert state["base_loads"] == 1
    assert state["control_loads"] == {"cn10_canny": 1, "cn10_hed": 1}
    assert state["active_control"] == "cn10_canny"
    assert state["control_swaps"] == 3


def test_lru_cache_evicts_the_least_recently_used():
    manager = SharedModel(tiny=True, device="cpu", cache_size=2)
    for key in ("cn10_canny", "cn10_hed", "cn10_canny", "cn10_seg"):  # cache: hed evicted, canny kept
        with manager.activate(key):
            pass
    assert manager.status()["cached_controls"] == ["cn10_canny", "cn10_seg"]
    with manager.activate("cn10_canny"):
        pass
    with manager.activate("cn10_hed"):
        pass
    assert manager.control_loads == {"cn10_canny": 1, "cn10_hed": 2, "cn10_seg": 1}


def test_same_key_twice_does_not_swap():
    manager = SharedModel(tiny=True, device="cpu")
    for _ in range(3):
        with manager.activate("cn10_depth"):
            pass
    assert manager.control_swaps == 1
    assert manager.control_loads == {"cn10_depth": 1}


def test_low_memory_keeps_no_copies():
    manager = SharedModel(tiny=True, device="cpu", low_memory=True)
    for key in ("cn10_canny", "cn10_hed", "cn10_canny"):
        with manager.activate(key) as model:
            assert model.low_memory
    assert manager.status()["cached_controls"] == []
    assert manager.control_loads == {"cn10_canny": 2, "cn10_hed": 1}


def test_tiny_mode_is_the_same_every_run():
    weights = []
    for _ in range(2):
        with SharedModel(tiny=True, device="cpu").activate("cn10_mlsd") as model:
            weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert same(*weights)


def test_unknown_key_is_refused():
    with pytest.raises(KeyError, match="unknown weights"):
        with SharedModel(tiny=True, device="cpu").activate("control_sd15_nothing"):
            pass


@pytest.fixture()
def weight_files(tmp_path):
    """A tiny 'SD base' and tiny ControlNet files named like the real ones."""
    torch.manual_seed(1)
    source = create_model(TINY_CONFIG)
    state = source.state_dict()
    base = {k: v.contiguous() for k, v in state.items() if not k.startswith("control_model.")}
    save_file(base, tmp_path / WEIGHTS["sd15"].basename)
    torch.save(state, tmp_path / WEIGHTS["cn10_canny"].basename)  # full 1.0 file
    control_only = {k: v for k, v in state.items() if k.startswith("control_model.")}
    torch.manual_seed(2)
    other = {k: v + 1 for k, v in control_only.items()}
    torch.save(other, tmp_path / WEIGHTS["cn11_canny"].basename)  # 1.1 control-only file
    return tmp_path, state, other


def real_manager(models_dir, **kw) -> SharedModel:
    return SharedModel(files=WeightFiles(search_dirs=[models_dir], offline=True), device="cpu", config=TINY_CONFIG, **kw)


def test_real_files_are_loaded_into_one_base(weight_files):
    models_dir, state, other = weight_files
    manager = real_manager(models_dir)
    with manager.activate("cn10_canny") as model:
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    with manager.activate("cn11_canny") as model:
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in other.items())
        assert torch.equal(loaded["model.diffusion_model.out.2.weight"], state["model.diffusion_model.out.2.weight"])
    assert manager.base_loads == 1
    assert manager.control_loads == {"cn10_canny": 1, "cn11_canny": 1}


def test_missing_base_names_file_repo_and_folder(tmp_path):
    manager = real_manager(tmp_path)
    with pytest.raises(WeightsUnavailable) as err:
        with manager.activate("cn10_canny"):
            pass
    message = str(err.value)
    assert WEIGHTS["sd15"].basename in message and WEIGHTS["sd15"].repo in message and str(tmp_path) in message
    assert manager.base_loads == 0


def test_missing_control_file_then_recovery(weight_files):
    models_dir, _, _ = weight_files
    manager = real_manager(models_dir)
    with pytest.raises(WeightsUnavailable, match=WEIGHTS["cn10_hed"].basename):
        with manager.activate("cn10_hed"):
            pass
    assert manager.active is None
    with manager.activate("cn10_canny"):
        pass
    assert manager.base_loads == 1 and manager.active == "cn10_canny"


def test_corrupt_control_file_is_a_checkpoint_error(weight_files):
    models_dir, _, _ = weight_files
    (models_dir / WEIGHTS["cn10_seg"].basename).write_bytes(b"PK\x03\x04 truncated")
    manager = real_manager(models_dir)
    with pytest.raises(CheckpointError, match=WEIGHTS["cn10_seg"].basename):
        with manager.activate("cn10_seg"):
            pass
    with manager.activate("cn10_canny"):
        pass
    assert manager.control_loads == {"cn10_canny": 1}


def test_device_and_dtype_choices():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu7")
    assert pick_dtype(None, torch.device("cpu")) is torch.float32
    assert pick_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        pick_dtype("float16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype("float8", torch.device("cpu"))


def test_bfloat16_keeps_the_schedule_in_float32():
    with SharedModel(tiny=True, device="cpu", dtype="bfloat16").activate("cn10_canny") as model:
        assert model.alphas_cumprod.dtype is torch.float32
        assert next(model.control_model.parameters()).dtype is torch.bfloat16


def test_auto_dtype_follows_the_hardware(monkeypatch):
    import cldm.shared_model as shared

    assert pick_dtype("auto", torch.device("cuda")) is torch.float16
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(shared, "cpu_has_fast_bf16", lambda: native)
        assert pick_dtype("auto", torch.device("cpu")) is expected
    assert pick_dtype("auto", torch.device("mps")) is torch.float32


def test_an_unreachable_hub_fails_fast_names_the_file_and_is_asked_once(monkeypatch, tmp_path):
    import time

    from huggingface_hub import constants

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "HF_HUB_OFFLINE", "ANNOTATOR_CKPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    files = WeightFiles(search_dirs=[tmp_path, tmp_path])
    start = time.monotonic()
    for _ in range(2):
        with pytest.raises(WeightsUnavailable, match="netG.pth.*the hub cannot be reached") as err:
            files.resolve("lineart_anime")
    assert time.monotonic() - start < 5
    assert files.hub.probes == 1  # the second request did not wait again
    looked = str(err.value).split("Looked in: ")[1].split(";")[0].split(", ")
    assert len(looked) == len(set(looked)) == 3  # each folder once


def test_a_lora_on_the_real_base_is_undone_by_reading_the_base_file_again(weight_files, tmp_path):
    """bfloat16 base from a float32 file, a LoRA merged and unmerged: the base comes back bit for bit from the
    file (no copy is kept); when the file was replaced meanwhile, the base is loaded afresh from it."""
    from tests.test_fast_and_lora import kohya_lora

    models_dir, state, _ = weight_files
    manager = real_manager(models_dir, dtype="bfloat16")
    with manager.activate("cn10_canny") as model:
        base = {k: v.clone() for k, v in model.state_dict().items()}
        lora = kohya_lora(model, tmp_path / "style.safetensors")
    with manager.activate("cn10_canny", loras=[(str(lora), 0.8)]) as model:
        assert manager._merged is not None and not manager._merged._originals
        assert sum(not torch.equal(v, base[k]) for k, v in model.state_dict().items()) > 2
    with manager.activate("cn10_canny") as model:
        assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
    assert manager.base_loads == 1

    with manager.activate("cn10_canny", loras=[(str(lora), 0.8)]):
        pass
    replaced = {k: v.contiguous() + 1 for k, v in state.items() if not k.startswith("control_model.")}
    save_file(replaced, models_dir / WEIGHTS["sd15"].basename)
    with manager.activate("cn10_canny") as model:
        key = "model.diffusion_model.out.2.weight"
        assert torch.equal(model.state_dict()[key], replaced[key].bfloat16())
    assert manager.base_loads == 2 and manager.active_loras == ()
