"""Shared test helpers: the tiny ControlLDM, random weights in the official layout, diffusers references.

Typical use::

    from tests.tiny import TINY_YAML, random_model, to_diffusers
    model, sd = random_model(seed=0)          # our ControlLDM + its official-layout state dict
    ref = to_diffusers(sd, TINY_YAML)          # diffusers/transformers models holding the same weights
    torch.save(sd, tmp_path / "tiny.pth")      # e.g. for checkpoint-loading tests

Random weights make every parameter non-zero (zero convolutions, proj_out and the UNet's last conv included),
so the control path contributes; `zero_control_convs_` restores the zero convolutions of a fresh ControlNet.
The state dict also carries `...embeddings.position_ids`, as the official files (transformers 4.19) do.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from cldm.config import load_config
from cldm.control_ldm import ControlLDM
from cldm.model import build_model

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "models" / "cldm_tiny.yaml"
V15_YAML = ROOT / "models" / "cldm_v15.yaml"
KEYS_JSON = Path(__file__).parent / "keys" / "state_dict_keys_cldm_v15.json"
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
CLIP_PREFIX = "cond_stage_model.transformer."


def official_keys() -> dict[str, dict]:
    """Official key -> {"shape", "dtype"} of control_sd15_*.pth, in state-dict order."""
    return json.loads(KEYS_JSON.read_text())["keys"]


def random_state_dict(model: ControlLDM, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-layout state dict with random, non-zero parameters; buffers copied from the model."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    parameters = {name for name, _ in model.named_parameters()}
    for name, tensor in model.state_dict().items():
        if name in parameters:
            noise = torch.randn(tensor.shape, generator=gen)
            if tensor.ndim >= 2:  # conv / linear / embedding: keep activations O(1)
                value = noise / (tensor[0].numel() ** 0.5)
            elif name.endswith("weight"):  # GroupNorm / LayerNorm scale
                value = 1.0 + 0.1 * noise
            else:
                value = 0.1 * noise
            sd[name] = value.to(tensor.dtype)
        else:
            sd[name] = tensor.clone()
    sd[POSITION_IDS] = torch.arange(model.cond_stage_model.max_length)[None]
    return sd


def random_model(seed: int = 0, yaml_path: Path = TINY_YAML) -> tuple[ControlLDM, dict[str, torch.Tensor]]:
    """A ControlLDM (eval mode) holding random non-zero weights, and those weights in the official layout."""
    model = build_model(load_config(yaml_path)).eval()
    sd = random_state_dict(model, seed)
    model.load_state_dict(sd, strict=True)
    return model, sd


def zero_control_convs_(model: ControlLDM) -> ControlLDM:
    """Zero the 1x1 zero convolutions (and middle_block_out), as in a freshly initialised ControlNet."""
    with torch.no_grad():
        for conv in [*model.control_model.zero_convs, model.control_model.middle_block_out]:
            for p in conv.parameters():
                p.zero_()
    return model


def hf_tokenizer(directory: Path):
    """transformers' CLIPTokenizer built offline from open_clip's BPE file (vocab.json + merges.txt)."""
    from transformers import CLIPTokenizer as HFCLIPTokenizer

    from ldm.clip import default_bpe_path, load_bpe

    vocab, _ = load_bpe()
    with gzip.open(default_bpe_path(), "rt", encoding="utf-8") as f:
        merge_lines = f.read().split("\n")[1:49152 - 256 - 2 + 1]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merge_lines) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({**special, "model_max_length": 77}), encoding="utf-8")
    tok = HFCLIPTokenizer.from_pretrained(str(directory), local_files_only=True)
    if len(tok) != 49408:
        raise RuntimeError(f"offline CLIPTokenizer has {len(tok)} tokens, expected 49408")
    return tok


@dataclass
class DiffusersModels:
    unet: torch.nn.Module
    controlnet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module


def _controlnet_config(original: dict, checkpoint: dict, image_size: int) -> dict:
    from diffusers.loaders import single_file_utils as sfu

    try:
        return sfu.create_controlnet_diffusers_config_from_ldm(original, checkpoint, image_size=image_size)
    except TypeError:
        # diffusers 0.42 calls create_unet_diffusers_config_from_ldm without `checkpoint` (parity fact 2).
        params = dict(original["model"]["params"])
        control = dict(params["control_stage_config"]["params"])
        control["out_channels"] = control["in_channels"]
        params["unet_config"] = {"target": params["unet_config"]["target"], "params": control}
        unet_cfg = sfu.create_unet_diffusers_config_from_ldm({"model": {"params": params}}, checkpoint,
                                                             image_size=image_size)
        keep = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
                "attention_head_dim", "use_linear_projection", "class_embed_type", "addition_embed_type",
                "addition_time_embed_dim", "projection_class_embeddings_input_dim", "transformer_layers_per_block")
        return {"conditioning_channels": control["hint_channels"], **{k: unet_cfg[k] for k in keep}}


def _clip_state_dict(checkpoint: dict, text_model) -> dict:
    from diffusers.loaders import single_file_utils as sfu

    sd = sfu.convert_ldm_clip_checkpoint(checkpoint)
    ids = sd.pop("text_model.embeddings.position_ids", None)
    if ids is not None and not torch.equal(ids.flatten(), torch.arange(ids.numel())):
        raise ValueError("position_ids must be arange")
    if not hasattr(text_model, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel (parity fact 1)
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    return sd


def to_diffusers(checkpoint: dict[str, torch.Tensor], yaml_path: Path = TINY_YAML) -> DiffusersModels:
    """diffusers UNet/ControlNet/VAE and transformers CLIPTextModel with the checkpoint's weights,
    converted with diffusers' own single-file utilities; all in eval mode, float32."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    original = yaml.safe_load(Path(yaml_path).read_text())
    image_size = original["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["resolution"]

    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, checkpoint, image_size=image_size)
    unet = UNet2DConditionModel(**unet_cfg)
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(checkpoint, unet_cfg), strict=True)

    cn_cfg = _controlnet_config(original, checkpoint, image_size)
    controlnet = ControlNetModel(**cn_cfg)
    controlnet.load_state_dict(sfu.convert_controlnet_checkpoint(checkpoint, cn_cfg), strict=True)

    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, checkpoint, image_size=image_size)
    vae = AutoencoderKL(**vae_cfg)
    vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(checkpoint, vae_cfg), strict=True)

    text = load_config(yaml_path).cond_stage
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
        max_position_embeddings=text.max_length, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407))
    text_encoder.load_state_dict(_clip_state_dict(checkpoint, text_encoder), strict=True)
    return DiffusersModels(unet.eval(), controlnet.eval(), vae.eval(), text_encoder.eval())
