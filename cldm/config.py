"""Typed configuration of ControlLDM, parsed from the original yaml schema (`target` strings are only checked)."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cldm.cldm import ControlLDM

EXPECTED_TARGETS = {
    "model": "cldm.cldm.ControlLDM",
    "unet_config": "cldm.cldm.ControlledUnetModel",
    "control_stage_config": "cldm.cldm.ControlNet",
    "first_stage_config": "ldm.models.autoencoder.AutoencoderKL",
    "cond_stage_config": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
    "lossconfig": "torch.nn.Identity",
}


class ConfigError(ValueError):
    """A yaml config that does not describe a supported ControlLDM."""


@dataclass(frozen=True, kw_only=True)
class UNetBackboneConfig:
    """Fields shared by the UNet and the ControlNet (openaimodel argument names)."""
    in_channels: int
    model_channels: int
    attention_resolutions: tuple[int, ...]
    num_res_blocks: int
    channel_mult: tuple[int, ...]
    context_dim: int
    num_heads: int = -1
    num_head_channels: int = -1
    transformer_depth: int = 1
    use_spatial_transformer: bool = True
    use_linear_in_transformer: bool = False
    use_checkpoint: bool = False
    legacy: bool = True
    dropout: float = 0.0
    image_size: int = 32  # unused by the model, kept from the original schema

    def __post_init__(self) -> None:
        if not self.use_spatial_transformer:
            raise ConfigError("only use_spatial_transformer: true (text cross-attention) is supported")
        if (self.num_heads == -1) == (self.num_head_channels == -1):
            raise ConfigError("set exactly one of num_heads and num_head_channels")
        for name in ("in_channels", "model_channels", "num_res_blocks", "context_dim", "transformer_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError(f"channel_mult must be non-empty positive integers, got {self.channel_mult}")
        if self.model_channels % 32:
            raise ConfigError("model_channels must be a multiple of 32 (GroupNorm with 32 groups)")
        split = self.num_heads if self.num_head_channels == -1 else self.num_head_channels
        if split < 1 or any(self.model_channels * m % split for m in self.channel_mult):
            raise ConfigError(f"every level's channel count must be divisible by num_heads/num_head_channels ({split})")


@dataclass(frozen=True, kw_only=True)
class UNetConfig(UNetBackboneConfig):
    out_channels: int


@dataclass(frozen=True, kw_only=True)
class ControlNetConfig(UNetBackboneConfig):
    hint_channels: int

    @property
    def num_outputs(self) -> int:
        """Residuals produced: one per input block plus the middle block (13 for SD 1.5)."""
        levels = len(self.channel_mult)
        return 1 + levels * self.num_res_blocks + (levels - 1) + 1


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    embed_dim: int
    double_z: bool
    z_channels: int
    resolution: int
    in_channels: int
    out_ch: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.double_z:
            raise ConfigError("the KL autoencoder needs double_z: true")
        if self.attn_resolutions:
            raise ConfigError("attn_resolutions must be empty (SD 1.5 VAE has attention only in its mid blocks)")
        if self.ch % 32:
            raise ConfigError("ch must be a multiple of 32 (GroupNorm with 32 groups)")

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True, kw_only=True)
class TextEncoderConfig:
    """FrozenCLIPEmbedder; defaults are CLIP ViT-L/14's text tower. Size fields exist for tiny test configs."""
    vocab_size: int = 49408
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_length: int = 77
    layer: str = "last"

    def __post_init__(self) -> None:
        if self.layer != "last":
            raise ConfigError(f"only layer: last is supported, got {self.layer!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError("hidden_size must be divisible by num_attention_heads")
        if self.vocab_size != 49408:
            raise ConfigError("the CLIP tokenizer needs vocab_size 49408")


@dataclass(frozen=True, kw_only=True)
class ControlLDMConfig:
    unet: UNetConfig
    control: ControlNetConfig
    first_stage: VAEConfig
    cond_stage: TextEncoderConfig
    linear_start: float
    linear_end: float
    timesteps: int = 1000
    scale_factor: float = 1.0
    only_mid_control: bool = False
    control_key: str = "hint"
    first_stage_key: str = "image"
    cond_stage_key: str = "image"
    image_size: int = 64
    channels: int = 4
    num_timesteps_cond: int = 1
    log_every_t: int = 100
    cond_stage_trainable: bool = False
    conditioning_key: str = "crossattn"
    parameterization: str = "eps"
    monitor: str = "val/loss"
    use_ema: bool = False
    scale_by_std: bool = False

    def __post_init__(self) -> None:
        if self.conditioning_key != "crossattn":
            raise ConfigError(f"conditioning_key must be 'crossattn', got {self.conditioning_key!r}")
        if self.parameterization not in ("eps", "v"):
            raise ConfigError(f"parameterization must be 'eps' or 'v', got {self.parameterization!r}")
        if self.use_ema or self.scale_by_std:
            raise ConfigError("use_ema and scale_by_std are not supported")
        if self.unet.context_dim != self.cond_stage.hidden_size or self.control.context_dim != self.unet.context_dim:
            raise ConfigError("context_dim of the UNet and ControlNet must equal the text encoder width")
        if self.channels != self.unet.in_channels or self.first_stage.embed_dim != self.unet.in_channels:
            raise ConfigError("latent channels disagree between model, unet_config and first_stage_config")
        shared = [f.name for f in dataclasses.fields(UNetBackboneConfig) if f.name != "image_size"]
        diff = [n for n in shared if getattr(self.unet, n) != getattr(self.control, n)]
        if diff:
            raise ConfigError(f"ControlNet must mirror the UNet encoder; these differ: {diff}")


def _coerce(value: Any, kind: Any, where: str) -> Any:
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    elif typing.get_origin(kind) is tuple:
        ok = isinstance(value, (list, tuple))
        value = tuple(_coerce(v, typing.get_args(kind)[0], where) for v in value) if ok else value
    else:
        raise TypeError(f"unsupported field type {kind}")
    if not ok:
        raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _build(cls: type, params: Any, where: str, **extra: Any) -> Any:
    """Dataclass from a yaml mapping: unknown keys, missing keys and wrong types raise ConfigError."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(params).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(extra)
    unknown = sorted(set(params) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name in names and f.name not in params
               and f.default is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in params.items()}
    return cls(**values, **extra)


def _section(node: Any, name: str, where: str, params_required: bool = True) -> dict:
    """Check a {target, params} node names what we expect; return its params."""
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: expected a mapping with target/params")
    unknown = sorted(set(node) - {"target", "params"})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}")
    if node.get("target") != EXPECTED_TARGETS[name]:
        raise ConfigError(f"{where}.target must be {EXPECTED_TARGETS[name]!r}, got {node.get('target')!r}")
    if params_required and "params" not in node:
        raise ConfigError(f"{where}: missing params")
    params = node.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}.params: expected a mapping")
    return dict(params)


def _vae(node: Any) -> VAEConfig:
    params = _section(node, "first_stage_config", "model.params.first_stage_config")
    params.pop("monitor", None)
    _section(params.pop("lossconfig", None), "lossconfig", "first_stage_config.params.lossconfig", False)
    ddconfig = params.pop("ddconfig", None)
    if not isinstance(ddconfig, dict):
        raise ConfigError("first_stage_config.params.ddconfig: expected a mapping")
    if "embed_dim" in ddconfig:
        raise ConfigError("first_stage_config.params.ddconfig: embed_dim belongs to params")
    return _build(VAEConfig, {**params, **ddconfig}, "first_stage_config.params")


def parse_config(data: Any) -> ControlLDMConfig:
    """ControlLDMConfig from the parsed yaml of the original schema (model: {target, params})."""
    if not isinstance(data, dict) or set(data) != {"model"}:
        raise ConfigError("config must have exactly one top-level key, 'model'")
    params = _section(data["model"], "model", "model")
    subs = {}
    for key in ("unet_config", "control_stage_config", "first_stage_config", "cond_stage_config"):
        if key not in params:
            raise ConfigError(f"model.params: missing {key}")
        subs[key] = params.pop(key)
    unet = _build(UNetConfig, _section(subs["unet_config"], "unet_config", "unet_config"), "unet_config.params")
    control = _build(ControlNetConfig, _section(subs["control_stage_config"], "control_stage_config",
                                                "control_stage_config"), "control_stage_config.params")
    text = _build(TextEncoderConfig, _section(subs["cond_stage_config"], "cond_stage_config", "cond_stage_config",
                                              params_required=False), "cond_stage_config.params")
    return _build(ControlLDMConfig, params, "model.params", unet=unet, control=control,
                  first_stage=_vae(subs["first_stage_config"]), cond_stage=text)


def load_config(path: str | Path) -> ControlLDMConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open("r", encoding="utf-8") as f:
        return parse_config(yaml.safe_load(f))


def build_model(config: ControlLDMConfig) -> ControlLDM:
    """A ControlLDM with fresh weights (build under `torch.device('meta')` to skip allocation)."""
    return ControlLDM(config)
