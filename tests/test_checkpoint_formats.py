"""The weight layouts users have, loaded into the tiny model, each compared with the same weights in the official
layout: the fp16 control-only files of the WebUI / ComfyUI communities (with and without the `control_model.`
prefix) and diffusers-format ControlNets and SD bases written by diffusers' and transformers' own
`save_pretrained`. At full size the name conversion is checked on the meta device against the official key list."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from cldm.bases import load_sd_base
from cldm.checkpoint import CheckpointError
from cldm.config import load_config
from cldm.diffusers_names import to_original
from cldm.model import create_model, load_control, load_full_checkpoint
from cldm.shared_model import SharedModel
from tests.tiny import KEYS_JSON, POSITION_IDS, TINY_YAML, V15_YAML, random_model, to_diffusers
from weights.files import WeightFiles
from weights.table import WEIGHTS

CONTROL = "control_model."


@pytest.fixture(scope="module")
def official():
    _, sd = random_model(seed=3)
    return sd


@pytest.fixture(scope="module")
def reference(official):
    """The official-layout weights loaded the official way."""
    model = create_model(TINY_YAML)
    load_full_checkpoint(model, _saved(official))
    return model


_FILES: dict[int, object] = {}


def _saved(sd):
    import tempfile
    from pathlib import Path

    key = id(sd)
    if key not in _FILES:
        folder = Path(tempfile.mkdtemp(prefix="official-"))
        torch.save(sd, folder / "official.pth")
        _FILES[key] = folder / "official.pth"
    return _FILES[key]


@pytest.fixture(scope="module")
def saved_diffusers(official, tmp_path_factory):
    """diffusers' and transformers' own save_pretrained of models holding the official weights."""
    ref = to_diffusers(official, TINY_YAML)
    root = tmp_path_factory.mktemp("diffusers")
    ref.controlnet.save_pretrained(root / "controlnet")
    for part in ("unet", "vae", "text_encoder"):
        getattr(ref, part).save_pretrained(root / "base" / part)
    return root


def max_abs_diff(a: dict, b: dict, prefix: str = "") -> float:
    keys = [k for k in a if k.startswith(prefix) and k != POSITION_IDS]
    assert keys and all(k in b for k in keys)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys)


def control_part(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if k.startswith(CONTROL)}


@pytest.mark.parametrize("prefixed", [False, True], ids=["webui_bare_keys", "comfy_prefixed_keys"])
def test_fp16_control_only_safetensors(tmp_path, official, prefixed):
    half = {(k if prefixed else k[len(CONTROL):]): v.half().contiguous() for k, v in control_part(official).items()}
    save_file(half, tmp_path / "control_canny-fp16.safetensors")
    model = create_model(TINY_YAML)
    load_control(model, tmp_path / "control_canny-fp16.safetensors")
    state = model.state_dict()
    for key, value in control_part(official).items():
        assert torch.equal(state[key], value.half().float()), key  # the file's values, widened exactly
    err = max_abs_diff(control_part(official), state)
    print(f"fp16 file vs fp32 official: max abs diff {err:.2e}")
    assert 0 < err < 1e-2


def test_fp16_default_keys_are_found_and_get_the_originals_tiny_weights(tmp_path, official):
    """The apps' default keys: their file (bare keys) is read from the models folder; in tiny mode they get the
    random weights of the official file they copy, so outputs do not change with the default."""
    half = {k[len(CONTROL):]: v.half().contiguous() for k, v in control_part(official).items()}
    save_file(half, tmp_path / WEIGHTS["cn10_canny_fp16"].basename)
    base = {k: v for k, v in official.items() if not k.startswith(CONTROL) and k != POSITION_IDS}
    save_file({k: v.contiguous() for k, v in base.items()}, tmp_path / WEIGHTS["sd15"].basename)
    shared = SharedModel(files=WeightFiles([tmp_path], offline=True), device="cpu", config=TINY_YAML)
    with shared.activate("cn10_canny_fp16") as model:
        assert torch.equal(model.state_dict()["control_model.zero_convs.0.0.weight"],
                           official["control_model.zero_convs.0.0.weight"].half().float())
    tiny = SharedModel(tiny=True, device="cpu")
    with tiny.activate("cn10_canny_fp16") as model:
        fp16 = {k: v.clone() for k, v in model.control_model.state_dict().items()}
    with tiny.activate("cn10_canny") as model:
        assert all(torch.equal(fp16[k], v) for k, v in model.control_model.state_dict().items())
    with tiny.activate("cn11_canny_fp16") as model:
        assert not torch.equal(fp16["input_hint_block.0.weight"], model.control_model.state_dict()["input_hint_block.0.weight"])


def test_an_official_file_on_disk_serves_the_fp16_key(tmp_path, official):
    """Nothing is downloaded for the fp16 default when the official file (the same weights) is already there."""
    torch.save(control_part(official), tmp_path / WEIGHTS["cn11_depth"].basename)
    files = WeightFiles([tmp_path], offline=True)
    assert files.resolve("cn11_depth_fp16") == tmp_path / WEIGHTS["cn11_depth"].basename
    diffusers_dir = tmp_path / "sd-controlnet-seg"
    diffusers_dir.mkdir()
    (diffusers_dir / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert files.resolve("cn10_seg_fp16") == diffusers_dir / "diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize("as_folder", [True, False], ids=["folder", "weights_file"])
def test_diffusers_controlnet_equals_official(saved_diffusers, official, reference, as_folder):
    path = saved_diffusers / "controlnet"
    assert (path / "config.json").is_file()
    model = create_model(TINY_YAML)
    load_control(model, path if as_folder else path / "diffusion_pytorch_model.safetensors")
    err = max_abs_diff(reference.state_dict(), model.state_dict(), CONTROL)
    print(f"diffusers ControlNet vs official: max abs diff {err}")
    assert err == 0


def test_diffusers_base_folder_equals_official(saved_diffusers, official, reference):
    model = create_model(TINY_YAML)
    load_control(model, saved_diffusers / "controlnet")
    name = load_sd_base(model, WeightFiles(offline=True), base=saved_diffusers / "base")
    assert name == "base"
    ours, theirs = model.state_dict(), reference.state_dict()
    errs = {part: max_abs_diff(theirs, ours, prefix) for part, prefix in
            [("unet", "model.diffusion_model."), ("vae", "first_stage_model."), ("text", "cond_stage_model.")]}
    print(f"diffusers base vs official, max abs diff per part: {errs}")
    assert set(errs.values()) == {0.0}
    # ... and so the outputs: one denoising step with control, a decode, a text encoding.
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([500])
    hint, ctx = torch.rand(1, 3, 64, 64, generator=gen), torch.randn(1, 77, 32, generator=gen)
    with torch.no_grad():
        for m in (model, reference):
            # Parameters adopted from a memory-mapped file keep the file's alignment (safetensors: 8 bytes, torch
            # zip: 64), and CPU kernels pick their code path by alignment (1e-6 apart here): compare the numbers
            # from fresh memory.
            for p in m.parameters():
                p.data = p.data.clone()
            m.eval()
        cond = {"c_concat": [hint], "c_crossattn": [ctx]}
        eps = [m.apply_model(x, t, cond) for m in (model, reference)]
        images = [m.decode_first_stage(x) for m in (model, reference)]
        text = [m.get_learned_conditioning(["a house"]) for m in (model, reference)]
    diffs = {name: (a - b).abs().max().item() for name, (a, b) in {"eps": eps, "decode": images, "text": text}.items()}
    print(f"diffusers base vs official, max abs output diff: {diffs}")
    assert max(diffs.values()) == 0


def test_diffusers_parts_as_single_files(saved_diffusers, official, reference, tmp_path):
    """A diffusers UNet file as the base (VAE and text encoder from the default file), a diffusers VAE as --vae."""
    default = {k: torch.zeros_like(v) for k, v in official.items() if not k.startswith(CONTROL) and k != POSITION_IDS}
    save_file(default, tmp_path / WEIGHTS["sd15"].basename)
    model = create_model(TINY_YAML)
    name = load_sd_base(model, WeightFiles([tmp_path], offline=True),
                        base=saved_diffusers / "base" / "unet" / "diffusion_pytorch_model.safetensors",
                        vae=saved_diffusers / "base" / "vae")
    assert "text encoder: v1-5-pruned-emaonly.safetensors" in name and "VAE: base/vae" in name, name
    state = model.state_dict()
    assert max_abs_diff(reference.state_dict(), state, "model.diffusion_model.") == 0
    assert max_abs_diff(reference.state_dict(), state, "first_stage_model.") == 0
    assert max_abs_diff(default, state, "cond_stage_model.") == 0


def test_the_wrong_diffusers_part_is_named(saved_diffusers):
    model = create_model(TINY_YAML)
    with pytest.raises(CheckpointError, match="holds no ControlNet weights.*SD 1.5 base|holds no ControlNet"):
        load_control(model, saved_diffusers / "base" / "unet")
    with pytest.raises(CheckpointError, match="should hold the SD 1.5 VAE, holds UNet"):
        load_sd_base(model, WeightFiles(offline=True), vae=saved_diffusers / "base" / "unet")
    with pytest.raises(CheckpointError, match="is a ControlNet, not a part of an SD 1.5 base"):
        load_sd_base(model, WeightFiles(offline=True), base=saved_diffusers / "controlnet")


def test_full_size_names_match_the_official_keys():
    """diffusers' SD 1.5 UNet, ControlNet, VAE and transformers' CLIP text model (meta device, real sizes) convert
    to exactly the official keys and shapes."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    official = json.loads(KEYS_JSON.read_text())["keys"]
    config = load_config(V15_YAML)
    with torch.device("meta"):
        nets = {
            "unet": UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8),
            "controlnet": ControlNetModel(cross_attention_dim=768, attention_head_dim=8),
            "vae": AutoencoderKL(block_out_channels=[128, 256, 512, 512], latent_channels=4, layers_per_block=2,
                                 down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4),
            "text_encoder": CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                         num_attention_heads=12, hidden_act="quick_gelu")),
        }
    prefixes = {"unet": "model.diffusion_model.", "controlnet": CONTROL, "vae": "first_stage_model.",
                "text_encoder": "cond_stage_model.transformer."}
    for part, net in nets.items():
        converted, unknown = to_original(net.state_dict(), part, config)
        want = {k: v["shape"] for k, v in official.items() if k.startswith(prefixes[part]) and k != POSITION_IDS}
        got = {k: list(v.shape) for k, v in converted.items() if k != POSITION_IDS}
        assert not unknown, (part, unknown[:3])
        assert got == want, (part, sorted(set(got) ^ set(want))[:5])


def test_full_size_families_are_told_apart():
    """From key names and shapes alone (meta device, real sizes): the official SD 1.5 + ControlNet layout is an
    SD 1.5 base; diffusers' SD 2.x and SDXL UNets, the same UNet's SD 1.5 layout with a 1024-wide context, a
    ControlNet alone and a diffusers VAE are not, and the message says what they are."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from cldm.checkpoint_kinds import not_an_sd15_base

    official = {k: v["shape"] for k, v in json.loads(KEYS_JSON.read_text())["keys"].items()}
    assert not_an_sd15_base(official) is None
    sd2_layout = {k: ([v[0], 1024] if k.endswith("attn2.to_k.weight") else v) for k, v in official.items()}
    assert "Stable Diffusion 2.x" in not_an_sd15_base(sd2_layout)
    with torch.device("meta"):
        sd2 = UNet2DConditionModel(cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True)
        sdxl = UNet2DConditionModel(cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
                                    projection_class_embeddings_input_dim=2816, block_out_channels=(320, 640, 1280),
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20))
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], latent_channels=4, layers_per_block=2,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    shapes = lambda net: {k: list(v.shape) for k, v in net.state_dict().items()}  # noqa: E731
    assert "Stable Diffusion 2.x" in not_an_sd15_base(shapes(sd2))
    assert "SDXL" in not_an_sd15_base(shapes(sdxl))
    assert "VAE" in not_an_sd15_base(shapes(vae))
    assert "ControlNet without a base" in not_an_sd15_base({k: v for k, v in official.items() if k.startswith(CONTROL)})
