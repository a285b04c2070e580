"""`--base` / `--vae`: any SD 1.5 single file (EMA or not, with or without VAE / text encoder: the missing parts
come from the default SD 1.5 file), a diffusers-format folder or repo id, a separate VAE; files that are not SD
1.5 (SD 2.x, SDXL, a LoRA, a ControlNet, a VAE, an inpainting UNet) are refused with what they are."""
from __future__ import annotations

import argparse

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from cldm.checkpoint import CheckpointError
from cldm.shared_model import SharedModel
from tests.fake_hub import COMMIT, put_in_cache
from tests.tiny import POSITION_IDS, TINY_YAML, random_model, to_diffusers
from weights.files import WeightFiles
from weights.table import WEIGHTS

UNET, VAE, TEXT, CONTROL = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.", "control_model."


@pytest.fixture(scope="module")
def official():
    return random_model(seed=5)[1]


@pytest.fixture(scope="module")
def default_sd15(official):
    """The default base file: other weights than the ones under test (every value + 1)."""
    return {k: v + 1 for k, v in official.items() if k.startswith((UNET, VAE, TEXT))}


@pytest.fixture
def models_dir(tmp_path, default_sd15):
    folder = tmp_path / "models"
    folder.mkdir()
    save_file(default_sd15, folder / WEIGHTS["sd15"].basename)
    return folder


def part(sd: dict, *prefixes: str) -> dict:
    return {k: v.contiguous() for k, v in sd.items() if k.startswith(prefixes)}


def shared(models_dir, **kw) -> SharedModel:
    return SharedModel(files=WeightFiles([models_dir], offline=True), device="cpu", config=TINY_YAML, **kw)


def loaded(manager: SharedModel) -> dict:
    """The base's weights, loaded by SharedModel's own path (no ControlNet needed)."""
    return {k: v.clone() for k, v in manager._base().state_dict().items()}


def assert_parts(state: dict, expected: dict, *prefixes: str) -> None:
    keys = [k for k in expected if k.startswith(prefixes) and k != POSITION_IDS]
    assert keys
    for k in keys:
        assert torch.equal(state[k], expected[k]), k


def test_single_file_without_ema(tmp_path, models_dir, official):
    save_file(part(official, UNET, VAE, TEXT), tmp_path / "my_model.safetensors")
    manager = shared(models_dir, base=tmp_path / "my_model.safetensors")
    assert manager.status()["base"] == "my_model.safetensors"
    state = loaded(manager)
    assert_parts(state, official, UNET, VAE, TEXT)
    assert manager.status()["base"] == "my_model.safetensors"


def test_text_encoder_saved_without_text_model_level(tmp_path, models_dir, official):
    """Checkpoints made with transformers < 4.22 name the text encoder cond_stage_model.transformer.embeddings.*."""
    old = {k.replace(TEXT + "text_model.", TEXT): v for k, v in part(official, UNET, VAE, TEXT).items()}
    assert any(k.startswith(TEXT + "encoder.") for k in old)
    save_file(old, tmp_path / "old_model.safetensors")
    assert_parts(loaded(shared(models_dir, base=tmp_path / "old_model.safetensors")), official, UNET, VAE, TEXT)


def test_ckpt_with_ema_copies_uses_the_plain_weights(tmp_path, models_dir, official):
    sd = part(official, UNET, VAE, TEXT)
    ema = {"model_ema." + k[len("model."):].replace(".", ""): v * 3 for k, v in sd.items() if k.startswith(UNET)}
    torch.save({"state_dict": {**sd, **ema, "model_ema.num_updates": torch.tensor(7)}, "global_step": 1}, tmp_path / "v1-5-pruned.ckpt")
    assert_parts(loaded(shared(models_dir, base=tmp_path / "v1-5-pruned.ckpt")), official, UNET, VAE, TEXT)
    # A file holding only the EMA copy of the UNet: that copy is the UNet.
    torch.save({"state_dict": {**part(official, VAE, TEXT), **ema}}, tmp_path / "ema_only.ckpt")
    state = loaded(shared(models_dir, base=tmp_path / "ema_only.ckpt"))
    assert_parts(state, {k: v * 3 for k, v in official.items() if k.startswith(UNET)}, UNET)
    assert_parts(state, official, VAE, TEXT)


def test_missing_parts_come_from_the_default_file(tmp_path, models_dir, official, default_sd15):
    save_file(part(official, UNET), tmp_path / "unet_only.safetensors")
    manager = shared(models_dir, base=tmp_path / "unet_only.safetensors")
    state = loaded(manager)
    assert_parts(state, official, UNET)
    assert_parts(state, default_sd15, VAE, TEXT)
    name = manager.status()["base"]
    assert name == ("unet_only.safetensors (VAE: v1-5-pruned-emaonly.safetensors; "
                    "text encoder: v1-5-pruned-emaonly.safetensors)"), name
    save_file(part(official, UNET, VAE), tmp_path / "no_text.safetensors")
    state = loaded(shared(models_dir, base=tmp_path / "no_text.safetensors"))
    assert_parts(state, official, UNET, VAE)
    assert_parts(state, default_sd15, TEXT)


@pytest.mark.parametrize("layout", ["bare_ckpt", "prefixed_safetensors", "diffusers_folder"])
def test_vae_replaces_the_bases(tmp_path, models_dir, official, default_sd15, layout):
    vae = {k[len(VAE):]: v * 2 for k, v in official.items() if k.startswith(VAE)}
    if layout == "bare_ckpt":  # vae-ft-mse-840000-ema-pruned.ckpt: bare keys, the training loss's weights too
        path = tmp_path / "vae-ft-mse-840000-ema-pruned.ckpt"
        torch.save({"state_dict": {**vae, "loss.logvar": torch.zeros(())}}, path)
    elif layout == "prefixed_safetensors":
        path = tmp_path / "some_model_with_a_vae.safetensors"
        save_file({VAE + k: v.contiguous() for k, v in vae.items()}, path)
    else:
        path = tmp_path / "sd-vae-ft-mse"
        to_diffusers({**official, **{VAE + k: v for k, v in vae.items()}}, TINY_YAML).vae.save_pretrained(path)
    manager = shared(models_dir, vae=path)
    state = loaded(manager)
    assert_parts(state, {VAE + k: v for k, v in vae.items()}, VAE)
    assert_parts(state, default_sd15, UNET, TEXT)
    assert manager.status()["base"] == f"v1-5-pruned-emaonly.safetensors (VAE: {path.name})"


def test_full_controlnet_10_file_holds_an_sd15_base(tmp_path, models_dir, official):
    torch.save(official, tmp_path / "control_sd15_canny.pth")
    assert_parts(loaded(shared(models_dir, base=tmp_path / "control_sd15_canny.pth")), official, UNET, VAE, TEXT)


def test_diffusers_repo_id_from_the_hub_cache(tmp_path, models_dir, official, monkeypatch):
    saved = tmp_path / "saved"
    ref = to_diffusers(official, TINY_YAML)
    for name in ("unet", "vae", "text_encoder"):
        getattr(ref, name).save_pretrained(saved / name)
    cache = tmp_path / "hub"
    for file in saved.rglob("*"):
        if file.is_file():
            put_in_cache(cache, "someone/sd15-diffusers", str(file.relative_to(saved)), file.read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    manager = shared(models_dir, base="someone/sd15-diffusers")
    state = loaded(manager)
    assert_parts(state, official, UNET, VAE, TEXT)
    assert manager.status()["base"] == "someone/sd15-diffusers"
    assert (cache / "models--someone--sd15-diffusers" / "snapshots" / COMMIT / "unet").is_dir()


def sd2(official):
    prefix = TEXT + "text_model."
    return {("cond_stage_model.model." + k[len(prefix):] if k.startswith(prefix) else k): v.contiguous()
            for k, v in official.items() if k.startswith((UNET, VAE, TEXT))}


WRONG_FILES = {
    "sd2_openclip": (sd2, "Stable Diffusion 2.x checkpoint (OpenCLIP"),
    "sd2_context": (lambda o: {UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(8, 1024),
                               UNET + "out.2.weight": torch.zeros(4, 8, 3, 3)}, "context 1024 wide"),
    "sdxl": (lambda o: {**part(o, UNET, VAE), "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight":
                        torch.ones(8), UNET + "label_emb.0.0.weight": torch.zeros(8, 16)}, "an SDXL checkpoint"),
    "lora": (lambda o: {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
                        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
                        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, "a LoRA"),
    "controlnet": (lambda o: part(o, CONTROL), "a ControlNet without a base model"),
    "vae_alone": (lambda o: {k[len(VAE):]: v for k, v in part(o, VAE).items()}, "a VAE (autoencoder) alone; give it with --vae"),
    "inpainting": (lambda o: {**part(o, UNET, VAE, TEXT), UNET + "input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)},
                   "9 input channels"),
}


@pytest.mark.parametrize("kind", WRONG_FILES)
def test_files_that_are_not_sd15_are_refused_with_what_they_are(tmp_path, models_dir, official, kind):
    make, expected = WRONG_FILES[kind]
    path = tmp_path / f"{kind}.safetensors"
    save_file({k: v.contiguous() for k, v in make(official).items()}, path)
    manager = shared(models_dir, base=path)
    with pytest.raises(CheckpointError) as err:
        loaded(manager)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert manager._model is None and manager.base_loads == 0


def test_base_that_is_nowhere(models_dir):
    with pytest.raises(CheckpointError, match="no such file or folder, and not a hub repository id"):
        loaded(shared(models_dir, base="/no/such/model.safetensors"))


def test_tiny_mode_takes_no_base():
    with pytest.raises(ValueError, match="needs real weights"):
        SharedModel(tiny=True, base="x.safetensors")


def test_launch_passes_base_and_vae(tmp_path):
    import launch

    (tmp_path / "my.safetensors").write_bytes(b"")
    base, vae = str(tmp_path / "my.safetensors"), "stabilityai/sd-vae-ft-mse"
    args = launch.serve_parser(("canny",)).parse_args(["--base", base, "--vae", vae, "--models-dir", str(tmp_path)])
    backend = launch.make_backend(args)
    assert (backend.model.base, backend.model.vae) == (base, vae)
    assert backend.model.status()["base"] == "my.safetensors (VAE: sd-vae-ft-mse)"
    with pytest.raises(SystemExit, match="--vae /no/such/vae.pt: no such file or folder"):
        launch.make_backend(argparse.Namespace(**{**vars(args), "vae": "/no/such/vae.pt"}))
    generate = launch.generate_parser().parse_args(["--app", "canny", "--image", "x.png", "--prompt", "p", "--out", "o",
                                                    "--base", "someone/model"])
    assert generate.base == "someone/model" and generate.vae is None
    with pytest.raises(SystemExit, match="--tiny uses random ones"):
        launch.make_backend(argparse.Namespace(**{**vars(args), "tiny": True}))
