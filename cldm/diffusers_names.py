"""Module names of diffusers' `UNet2DConditionModel` / `ControlNetModel` / `AutoencoderKL` and transformers'
`CLIPTextModel`, and their original (ldm / openaimodel) names; `to_original` converts a diffusers-format state
dict of one part to the keys of this repository (the official checkpoints' layout). Every diffusers-format file the
suite reads goes through `to_original`.

The two layouts hold the same layers under different paths::

    diffusers                                         original (this repository, the official checkpoints)
    conv_in                                           input_blocks.0.0
    time_embedding.linear_1 / linear_2                time_embed.0 / time_embed.2
    down_blocks.L.resnets.j                           input_blocks.(1 + L*(R+1) + j).0
    down_blocks.L.attentions.j                        input_blocks.(1 + L*(R+1) + j).1
    down_blocks.L.downsamplers.0.conv                 input_blocks.(1 + L*(R+1) + R).0.op
    mid_block.resnets.0 / attentions.0 / resnets.1    middle_block.0 / .1 / .2
    up_blocks.U.resnets.j                             output_blocks.(U*(R+1) + j).0
    up_blocks.U.attentions.j                          output_blocks.(U*(R+1) + j).1
    up_blocks.U.upsamplers.0.conv                     output_blocks.(U*(R+1) + R).(1 or 2).conv
    conv_norm_out / conv_out                          out.0 / out.2
    ControlNet: controlnet_cond_embedding.conv_in,    input_hint_block.0, .2, ..., .14
                .blocks.0-5, .conv_out
                controlnet_down_blocks.i              zero_convs.i.0
                controlnet_mid_block                  middle_block_out.0

(R = num_res_blocks; U counts levels from the deepest). Inside a ResBlock the names differ (`RESNET`); inside a
transformer (`SpatialTransformer` = diffusers' `Transformer2DModel`) they are the same on both sides.

The VAE (`vae_module_names`): encoder/decoder `conv_in`, `conv_out`, `conv_norm_out` -> `norm_out`,
`down_blocks.i.resnets.j` -> `down.i.block.j` (`conv_shortcut` -> `nin_shortcut`), `downsamplers.0.conv` ->
`downsample.conv`, `mid_block.resnets.0/1` -> `mid.block_1/2`, `mid_block.attentions.0` -> `mid.attn_1` (its
linear `to_q/to_k/to_v/to_out.0`, older diffusers `query/key/value/proj_attn`, are the original's 1x1 convs
`q/k/v/proj_out`: same numbers, two more dimensions), `up_blocks.U` -> `up.(L-1-U)`. The text encoder has the
transformers names in both layouts, under `cond_stage_model.transformer.text_model.` here.

The block indices, which levels have attention and which ResBlocks have a 1x1 `skip_connection` follow from the
UNet config, so the maps are computed from it, for any channel_mult / num_res_blocks / attention_resolutions /
transformer_depth. Only modules holding parameters (convs, linears, norms) are listed: a parameter key
`<module>.<weight|bias>` is renamed by its module (`rename_state_dict`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from cldm.config import ControlLDMConfig, ControlNetConfig, UNetBackboneConfig, UNetConfig
    from ldm.config import VAEConfig

# diffusers ResnetBlock2D -> original ResBlock (Sequential indices: norm, SiLU, conv / SiLU, linear / norm, SiLU,
# dropout, conv).
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3"}
SKIP = ("conv_shortcut", "skip_connection")
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TIME_EMBEDDING = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2"}
# ControlNet hint encoder: diffusers' conv_in, blocks.0-5, conv_out are the eight convs of input_hint_block,
# which sit at the even Sequential indices (SiLUs between them).
HINT_CONVS = 8


def _resnet(diffusers: str, original: str, in_channels: int, out_channels: int) -> dict[str, str]:
    names = {f"{diffusers}.{d}": f"{original}.{o}" for d, o in RESNET.items()}
    if in_channels != out_channels:
        names[f"{diffusers}.{SKIP[0]}"] = f"{original}.{SKIP[1]}"
    return names


def _transformer(diffusers: str, original: str, depth: int) -> dict[str, str]:
    leaves = ["norm", "proj_in", "proj_out"]
    for k in range(depth):
        block = f"transformer_blocks.{k}"
        leaves += [f"{block}.{n}" for n in ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2")]
        leaves += [f"{block}.{attn}.{p}" for attn in ("attn1", "attn2") for p in ATTENTION]
    return {f"{diffusers}.{leaf}": f"{original}.{leaf}" for leaf in leaves}


def _has_attention(cfg: UNetBackboneConfig, level: int) -> bool:
    return 2 ** level in cfg.attention_resolutions


def encoder_module_names(cfg: UNetBackboneConfig) -> dict[str, str]:
    """{diffusers path: original path} of the part the UNet and ControlNet share: time embedding, conv_in,
    down blocks (input_blocks) and the mid block (middle_block)."""
    names = {**TIME_EMBEDDING, "conv_in": "input_blocks.0.0"}
    ch, index = cfg.model_channels, 1
    for level, mult in enumerate(cfg.channel_mult):
        out = mult * cfg.model_channels
        for j in range(cfg.num_res_blocks):
            names |= _resnet(f"down_blocks.{level}.resnets.{j}", f"input_blocks.{index}.0", ch, out)
            if _has_attention(cfg, level):
                names |= _transformer(f"down_blocks.{level}.attentions.{j}", f"input_blocks.{index}.1",
                                      cfg.transformer_depth)
            ch, index = out, index + 1
        if level != len(cfg.channel_mult) - 1:
            names[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    names |= _resnet("mid_block.resnets.0", "middle_block.0", ch, ch)
    names |= _transformer("mid_block.attentions.0", "middle_block.1", cfg.transformer_depth)
    names |= _resnet("mid_block.resnets.1", "middle_block.2", ch, ch)
    return names


def _encoder_channels(cfg: UNetBackboneConfig) -> list[int]:
    """Output channels of each input block, as the skip connections hand them to the output blocks."""
    chans = [cfg.model_channels]
    for level, mult in enumerate(cfg.channel_mult):
        chans += [mult * cfg.model_channels] * cfg.num_res_blocks
        if level != len(cfg.channel_mult) - 1:
            chans.append(mult * cfg.model_channels)
    return chans


def unet_module_names(cfg: UNetConfig) -> dict[str, str]:
    """{diffusers `UNet2DConditionModel` module path: original `UNetModel` module path} for every module with
    parameters."""
    names = encoder_module_names(cfg)
    skips = _encoder_channels(cfg)
    levels = len(cfg.channel_mult)
    ch, index = cfg.model_channels * cfg.channel_mult[-1], 0
    for up in range(levels):
        level = levels - 1 - up
        out = cfg.channel_mult[level] * cfg.model_channels
        for j in range(cfg.num_res_blocks + 1):
            names |= _resnet(f"up_blocks.{up}.resnets.{j}", f"output_blocks.{index}.0", ch + skips.pop(), out)
            ch = out
            if _has_attention(cfg, level):
                names |= _transformer(f"up_blocks.{up}.attentions.{j}", f"output_blocks.{index}.1",
                                      cfg.transformer_depth)
            if level and j == cfg.num_res_blocks:
                position = 2 if _has_attention(cfg, level) else 1
                names[f"up_blocks.{up}.upsamplers.0.conv"] = f"output_blocks.{index}.{position}.conv"
            index += 1
    names |= {"conv_norm_out": "out.0", "conv_out": "out.2"}
    return names


def controlnet_module_names(cfg: ControlNetConfig) -> dict[str, str]:
    """{diffusers `ControlNetModel` module path: original `ControlNet` module path} for every module with
    parameters."""
    names = encoder_module_names(cfg)
    hint = ["controlnet_cond_embedding.conv_in", *(f"controlnet_cond_embedding.blocks.{i}" for i in range(HINT_CONVS - 2)),
            "controlnet_cond_embedding.conv_out"]
    names |= {d: f"input_hint_block.{2 * i}" for i, d in enumerate(hint)}
    names |= {f"controlnet_down_blocks.{i}": f"zero_convs.{i}.0" for i in range(len(_encoder_channels(cfg)))}
    names["controlnet_mid_block"] = "middle_block_out.0"
    return names


def rename_state_dict(state_dict: dict, names: dict[str, str]) -> tuple[dict, list[str]]:
    """Rename `<module>.<parameter>` keys by their module through `names` (either direction: pass the inverted
    map for original -> diffusers). Returns the renamed dict and the keys whose module `names` does not hold."""
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        module, _, parameter = key.rpartition(".")
        if module in names:
            renamed[f"{names[module]}.{parameter}"] = value
        else:
            unknown.append(key)
    return renamed, unknown


# ---- VAE and text encoder ------------------------------------------------------------------------------------

VAE_RESNET = ("norm1", "conv1", "norm2", "conv2")
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                 "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
TEXT_MODEL = "text_model."


def _vae_resnet(diffusers: str, original: str, in_channels: int, out_channels: int) -> dict[str, str]:
    names = {f"{diffusers}.{n}": f"{original}.{n}" for n in VAE_RESNET}
    if in_channels != out_channels:
        names[f"{diffusers}.conv_shortcut"] = f"{original}.nin_shortcut"
    return names


def _vae_mid(side: str, channels: int) -> dict[str, str]:
    names = {}
    for j in range(2):
        names |= _vae_resnet(f"{side}.mid_block.resnets.{j}", f"{side}.mid.block_{j + 1}", channels, channels)
    names |= {f"{side}.mid_block.attentions.0.{d}": f"{side}.mid.attn_1.{o}" for d, o in VAE_ATTENTION.items()}
    return names


def vae_module_names(cfg: VAEConfig) -> dict[str, str]:
    """{diffusers `AutoencoderKL` module path: original `AutoencoderKL` module path} for every module with
    parameters (both namings of the attention layers)."""
    mults = [cfg.ch * m for m in cfg.ch_mult]
    levels = len(mults)
    names = {f"{side}.{n}": f"{side}.{n}" for side in ("encoder", "decoder") for n in ("conv_in", "conv_out")}
    names |= {f"{side}.conv_norm_out": f"{side}.norm_out" for side in ("encoder", "decoder")}
    names |= {n: n for n in ("quant_conv", "post_quant_conv")}
    ch = cfg.ch
    for i, out in enumerate(mults):
        for j in range(cfg.num_res_blocks):
            names |= _vae_resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", ch, out)
            ch = out
        if i != levels - 1:
            names[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
    names |= _vae_mid("encoder", mults[-1]) | _vae_mid("decoder", mults[-1])
    ch = mults[-1]
    for u in range(levels):
        i = levels - 1 - u
        for j in range(cfg.num_res_blocks + 1):
            names |= _vae_resnet(f"decoder.up_blocks.{u}.resnets.{j}", f"decoder.up.{i}.block.{j}", ch, mults[i])
            ch = mults[i]
        if i != 0:
            names[f"decoder.up_blocks.{u}.upsamplers.0.conv"] = f"decoder.up.{i}.upsample.conv"
    return names


# ---- one entry point -----------------------------------------------------------------------------------------

PREFIXES = {"unet": "model.diffusion_model.", "controlnet": "control_model.", "vae": "first_stage_model.",
            "text_encoder": "cond_stage_model.transformer.text_model."}


def diffusers_part(keys) -> str | None:
    """Which diffusers-format part a state dict is ("unet", "controlnet", "vae", "text_encoder"), None if none."""
    keys = set(keys)
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        return "controlnet"
    if "time_embedding.linear_1.weight" in keys and "conv_in.weight" in keys:
        return "unet"
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return "vae"
    if any(k.startswith(("embeddings.token_embedding.", TEXT_MODEL + "embeddings.token_embedding.")) for k in keys):
        return "text_encoder"
    return None


def to_original(state_dict: dict[str, Tensor], part: str, config: ControlLDMConfig) -> tuple[dict[str, Tensor], list[str]]:
    """A diffusers-format state dict of `part` with this repository's keys (prefix included), and the keys it
    could not place. Values are the same tensors, reshaped where the layouts differ (the VAE attention)."""
    prefix = PREFIXES[part]
    if part == "text_encoder":  # transformers >= 5 saves CLIPTextModel without the `text_model.` level
        return {prefix + k.removeprefix(TEXT_MODEL): v for k, v in state_dict.items()}, []
    names = {"unet": lambda: unet_module_names(config.unet), "controlnet": lambda: controlnet_module_names(config.control),
             "vae": lambda: vae_module_names(config.first_stage)}[part]()
    renamed, unknown = rename_state_dict(state_dict, names)
    if part == "vae":
        renamed = {k: v[:, :, None, None] if ".attn_1." in k and k.endswith(".weight") and v.ndim == 2 else v
                   for k, v in renamed.items()}
    return {prefix + k: v for k, v in renamed.items()}, unknown
