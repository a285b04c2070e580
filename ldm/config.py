"""Typed configuration of the Stable Diffusion 1.5 blocks (UNet, VAE, CLIP text encoder), with the argument
names of the original yaml schema, and the checked yaml-mapping -> dataclass conversion they are read with."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A yaml config that does not describe a supported model."""


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


def build_config(cls: type, params: Any, where: str, ignored: frozenset[str] = frozenset(), **extra: Any) -> Any:
    """Dataclass `cls` from a yaml mapping: unknown keys, missing keys and wrong types raise ConfigError.

    `ignored`: keys of the original schema that this implementation has no use for (accepted, not stored)."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(params).__name__}")
    params = {k: v for k, v in params.items() if k not in ignored}
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
