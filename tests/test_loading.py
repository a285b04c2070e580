"""Every loading path, from files written here in the official layouts, and the errors for wrong files."""
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cldm.model import CheckpointError, create_model, load_base, load_control, load_full_checkpoint, load_state_dict
from tests.tiny import POSITION_IDS, TINY_YAML as TINY, random_state_dict


def random_official(seed: int, position_ids: bool = True) -> dict[str, torch.Tensor]:
    """A full official-layout state dict of the tiny model, every parameter random (zero convs too)."""
    sd = random_state_dict(create_model(TINY), seed)
    if not position_ids:
        del sd[POSITION_IDS]
    return sd


def part(sd: dict, prefix: str, keep: bool = True) -> dict:
    return {k: v for k, v in sd.items() if k.startswith(prefix) == keep}


def assert_loaded(model, expected: dict, prefix: str = "", dtype=None):
    state = model.state_dict()
    for k, v in expected.items():
        if k.startswith(prefix) and k != POSITION_IDS:
            want = v if dtype is None else v.to(dtype)
            assert torch.equal(state[k], want.to(state[k].dtype)), k


@pytest.fixture(scope="module")
def official():
    return random_official(0)


@pytest.fixture
def model():
    return create_model(TINY)


@pytest.mark.parametrize("name,position_ids,wrapped", [
    ("full.pth", True, False), ("full.ckpt", False, True), ("full.safetensors", False, False),
])
def test_full_checkpoint(tmp_path, model, name, position_ids, wrapped):
    sd = random_official(1, position_ids)
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(sd, path)
    else:
        torch.save({"state_dict": sd, "global_step": 7} if wrapped else sd, path)
    assert set(load_state_dict(path)) == set(sd)
    load_full_checkpoint(model, path)
    assert_loaded(model, sd)


def test_control_only_pth_leaves_the_rest(tmp_path, model, official):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(part(official, "control_model."), tmp_path / "control_v11p_sd15_x.pth")
    load_control(model, tmp_path / "control_v11p_sd15_x.pth")
    assert_loaded(model, official, "control_model.")
    assert_loaded(model, part(before, "control_model.", keep=False))


def test_control_from_full_file_and_bare_keys(tmp_path, model, official):
    torch.save(official, tmp_path / "control_sd15_x.pth")
    before_unet = model.state_dict()["model.diffusion_model.out.2.weight"].clone()
    load_control(model, tmp_path / "control_sd15_x.pth")
    assert_loaded(model, official, "control_model.")
    assert torch.equal(model.state_dict()["model.diffusion_model.out.2.weight"], before_unet)
    bare = {k[len("control_model."):]: v * 2 for k, v in part(official, "control_model.").items()}
    save_file(bare, tmp_path / "bare.safetensors")
    load_control(model, tmp_path / "bare.safetensors")
    assert_loaded(model, {"control_model." + k: v for k, v in bare.items()})


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_fp16_control_safetensors(tmp_path, official, dtype):
    model = create_model(TINY, dtype=dtype)
    half = {k: v.half() for k, v in part(official, "control_model.").items()}
    save_file(half, tmp_path / "control_fp16.safetensors")
    load_control(model, tmp_path / "control_fp16.safetensors")
    expected_dtype = dtype or torch.float32
    assert model.control_model.time_embed[0].weight.dtype == expected_dtype
    assert_loaded(model, half, "control_model.", dtype=expected_dtype)


def sd_base(official: dict, ema: bool) -> dict:
    base = part(official, "control_model.", keep=False)
    base.pop(POSITION_IDS, None)
    if ema:
        for k, v in part(official, "model.diffusion_model.").items():
            base["model_ema." + k[len("model."):].replace(".", "")] = v + 1
        base["model_ema.num_updates"] = torch.tensor(1000)
        base["model_ema.decay"] = torch.tensor(0.9999)
    return base


def test_base_with_ema_keys(tmp_path, official):
    torch.save({"state_dict": sd_base(official, ema=True)}, tmp_path / "v1-5-pruned.ckpt")
    model = create_model(TINY)
    control_before = model.state_dict()["control_model.zero_convs.0.0.bias"].clone()
    load_base(model, tmp_path / "v1-5-pruned.ckpt")
    assert_loaded(model, part(official, "control_model.", keep=False))
    assert torch.equal(model.state_dict()["control_model.zero_convs.0.0.bias"], control_before)
    load_base(model, tmp_path / "v1-5-pruned.ckpt", use_ema=True)
    assert_loaded(model, {k: v + 1 for k, v in part(official, "model.diffusion_model.").items()})
    assert_loaded(model, part(official, "first_stage_model."))


def test_base_without_ema(tmp_path, official, model):
    save_file(sd_base(official, ema=False), tmp_path / "v1-5-pruned-emaonly.safetensors")
    load_base(model, tmp_path / "v1-5-pruned-emaonly.safetensors")
    assert_loaded(model, part(official, "control_model.", keep=False))
    with pytest.raises(CheckpointError, match="no EMA copy"):
        load_base(model, tmp_path / "v1-5-pruned-emaonly.safetensors", use_ema=True)


def error_of(loader, model, path) -> str:
    with pytest.raises(CheckpointError) as info:
        loader(model, path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_unreadable_files(tmp_path, model, official):
    good = tmp_path / "good.pth"
    torch.save(official, good)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    # Structure (the pickled index at the start of the archive) is damaged; tensor payloads carry no checksum
    # that is verified on load, so flipped bits inside tensor data are not detected.
    # Seed 103 leaves a pickle whose opcodes pop from an empty stack.
    for seed in (0, 1, 2, 103, 171):
        corrupt = bytearray(data)
        corrupt[64:1024] = random.Random(seed).randbytes(960)
        (tmp_path / f"corrupt{seed}.pth").write_bytes(bytes(corrupt))
    (tmp_path / "notes.safetensors").write_text("these are not weights\n" * 50)
    (tmp_path / "random.ckpt").write_bytes(random.Random(0).randbytes(5000))
    save_file({"a": torch.ones(1000)}, tmp_path / "cut.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "cut.safetensors").read_bytes()[:-100])
    for name in ("truncated.pth", *(f"corrupt{seed}.pth" for seed in (0, 1, 2, 103, 171)), "notes.safetensors",
                 "random.ckpt", "cut.safetensors"):
        message = error_of(load_full_checkpoint, model, tmp_path / name)
        assert "unreadable" in message or "not a checkpoint" in message, message
    assert "no such file" in error_of(load_full_checkpoint, model, tmp_path / "absent.pth")
    (tmp_path / "weights.txt").write_text("x")
    assert "unsupported file type" in error_of(load_full_checkpoint, model, tmp_path / "weights.txt")


def test_pickled_objects_are_refused(tmp_path, model):
    torch.save({"state_dict": {"w": torch.ones(1)}, "cfg": Path("x")}, tmp_path / "objects.ckpt")
    assert "refusing to unpickle" in error_of(load_full_checkpoint, model, tmp_path / "objects.ckpt")


def test_wrong_shapes_and_keys(tmp_path, model, official):
    wrong = dict(official)
    wrong["control_model.zero_convs.0.0.weight"] = torch.zeros(8, 8, 1, 1)
    wrong["model.diffusion_model.out.2.bias"] = torch.zeros(9)
    del wrong["first_stage_model.decoder.conv_out.weight"]
    wrong["some.extra.key"] = torch.zeros(1)
    torch.save(wrong, tmp_path / "wrong.pth")
    message = error_of(load_full_checkpoint, model, tmp_path / "wrong.pth")
    assert "1 missing keys (e.g. first_stage_model.decoder.conv_out.weight)" in message
    assert "1 unexpected keys (e.g. some.extra.key)" in message
    assert "2 shape mismatches" in message and "file [8, 8, 1, 1], model [32, 32, 1, 1]" in message
    assert "2.x" not in message


def test_sd2_like_file_gets_a_hint(tmp_path, model, official):
    prefix = "cond_stage_model.transformer.text_model."
    sd2 = {("cond_stage_model.model." + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in official.items()}
    save_file(sd2, tmp_path / "v2-1_512-ema-pruned.safetensors")
    message = error_of(load_base, model, tmp_path / "v2-1_512-ema-pruned.safetensors")
    assert "missing keys" in message and "unexpected keys" in message
    assert "Stable Diffusion 2.x" in message


def test_control_loader_rejects_base_file(tmp_path, model, official):
    save_file(sd_base(official, ema=False), tmp_path / "base.safetensors")
    assert "holds no ControlNet weights" in error_of(load_control, model, tmp_path / "base.safetensors")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uninitialised_build_then_load_equals_random_build_then_load(tmp_path, official, dtype):
    """create_model(init_weights=False) allocates in the target dtype, computes the schedule, and after a load
    is the same model as a randomly initialised one."""
    path = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in official.items() if k != POSITION_IDS}, str(path))
    fast = create_model(TINY, dtype=dtype, init_weights=False)
    assert {p.dtype for p in fast.parameters()} == {dtype}
    reference = create_model(TINY)
    for name, buffer in reference.named_buffers():
        assert torch.equal(buffer, dict(fast.named_buffers())[name]), name
    load_full_checkpoint(fast, path)
    for child in reference.children():  # the schedule buffers (top level) stay float32
        child.to(dtype)
    load_full_checkpoint(reference, path)
    for (name, a), b in zip(fast.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
