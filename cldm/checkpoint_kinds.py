"""What a weight file holds, told from its key names and a few shapes, so that a wrong file is refused with a
message that says what it is (an SD 2.x or SDXL model, a LoRA, a ControlNet, a VAE) instead of a list of keys.

    what = not_an_sd15_base(shapes)     # None for an SD 1.5 base, else e.g. "an SDXL checkpoint (...)"

`shapes` maps key names to shapes (`{k: v.shape}` of a loaded file, or a safetensors header); nothing is read.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

UNET = "model.diffusion_model."
CONTROL = "control_model."
VAE = "first_stage_model."
TEXT = "cond_stage_model.transformer."
SD15_CONTEXT = 768
SD2_CONTEXT = 1024
LORA_MARKERS = (".lora_up.", ".lora_down.", ".lora_A.", ".lora_B.", "lora_unet_", "lora_te_", ".hada_w1_a", ".lokr_w1")
DIFFUSERS_CONTROLNET = "controlnet_cond_embedding.conv_in.weight"
DIFFUSERS_UNET = "time_embedding.linear_1.weight"
DIFFUSERS_VAE = ("encoder.down_blocks.0.resnets.0.norm1.weight", "decoder.up_blocks.0.resnets.0.norm1.weight")
ORIGINAL_VAE = ("encoder.down.0.block.0.norm1.weight", "decoder.up.0.block.0.norm1.weight")

Shapes = Mapping[str, Sequence[int]]


def family(shapes: Shapes) -> str | None:
    """The model family when it is not SD 1.x: an SD 2.x or SDXL file, told by its text encoder and context width."""
    keys = list(shapes)
    if any(k.startswith("conditioner.embedders.") or ".label_emb." in k or k.startswith(("label_emb.", "add_embedding."))
           for k in keys):
        return "an SDXL checkpoint (conditioner.embedders / label_emb keys: two text encoders, 2048-wide context)"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder cond_stage_model.model.*, 1024-wide context)"
    width = context_width(shapes)
    if width == SD2_CONTEXT:
        return "a Stable Diffusion 2.x checkpoint (cross-attention context 1024 wide; SD 1.5 has 768)"
    return None


def context_width(shapes: Shapes) -> int | None:
    """The width of the text context the cross-attention layers expect, if the file has any."""
    for key, shape in shapes.items():
        if key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return int(shape[1])
    return None


def is_lora(shapes: Shapes) -> bool:
    return any(marker in k for k in shapes for marker in LORA_MARKERS)


def is_controlnet(shapes: Shapes) -> bool:
    return any(k.startswith(CONTROL) or k.startswith("input_hint_block.") or k == DIFFUSERS_CONTROLNET
               or "lora_controlnet" in k for k in shapes)


def is_vae(shapes: Shapes) -> bool:
    return any(k in shapes for k in ORIGINAL_VAE + DIFFUSERS_VAE)


def has_base_unet(shapes: Shapes) -> bool:
    return any(k.startswith(UNET) for k in shapes) or (DIFFUSERS_UNET in shapes and DIFFUSERS_CONTROLNET not in shapes)


def not_an_sd15_base(shapes: Shapes) -> str | None:
    """None when the file can be an SD 1.5 base (a UNet in the original or diffusers layout, with or without the
    VAE and the text encoder; a full ControlNet 1.0 file counts: it holds a whole SD 1.5), else what it is."""
    what = family(shapes)
    if what:
        return what
    if is_lora(shapes):
        return f"a LoRA ({len(shapes)} tensors of low-rank updates), not a model; LoRAs are merged with --lora"
    if has_base_unet(shapes):
        channels = unet_in_channels(shapes)
        if channels not in (None, 4):
            return (f"a UNet with {channels} input channels (inpainting models have 9, instruct-pix2pix 8), "
                    "not a text-to-image SD 1.5 base (4)")
        return None
    if is_controlnet(shapes):
        return "a ControlNet without a base model; ControlNets are chosen per app (the weights dropdown)"
    if is_vae(shapes):
        return "a VAE (autoencoder) alone; give it with --vae, next to a base"
    return "not a Stable Diffusion model: it has no UNet (no model.diffusion_model.* keys)"


def unet_in_channels(shapes: Shapes) -> int | None:
    for key in (UNET + "input_blocks.0.0.weight", "conv_in.weight"):
        shape = shapes.get(key)
        if shape is not None and len(shape) == 4:
            return int(shape[1])
    return None
