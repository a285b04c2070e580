"""Typed configuration of ControlLDM, parsed from the original yaml schema (`target` strings are only checked).

The SD 1.5 parts (UNet, VAE, text encoder) are configured by `ldm.config`; this module adds the ControlNet
and the whole model. Fields of the original schema that only its logging code read, or nothing (`image_size`),
are accepted and ignored; options that change the model are accepted only with the
values this implementation runs (e.g. `parameterization: eps`), with a message naming the field otherwise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ldm.config import ConfigError, TextEncoderConfig, UNetBackboneConfig, UNetConfig, VAEConfig, build_config

__all__ = ["ConfigError", "ControlNetConfig", "ControlLDMConfig", "parse_config", "load_config"]

EXPECTED_TARGETS = {
    "model": "cldm.cldm.ControlLDM",
    "unet_config": "cldm.cldm.ControlledUnetModel",
    "control_stage_config": "cldm.cldm.ControlNet",
    "first_stage_config": "ldm.models.autoencoder.AutoencoderKL",
    "cond_stage_config": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
    "lossconfig": "torch.nn.Identity",
}
# Read only by the original's logging code, or unused there too (image_size, num_timesteps_cond).
IGNORED_MODEL_FIELDS = frozenset({"image_size", "num_timesteps_cond", "log_every_t", "cond_stage_trainable", "monitor"})
IGNORED_UNET_FIELDS = frozenset({"image_size"})
# Options of the original that this implementation supports with one value only.
FIXED_MODEL_FIELDS = {"conditioning_key": "crossattn", "parameterization": "eps", "use_ema": False, "scale_by_std": False}


@dataclass(frozen=True, kw_only=True)
class ControlNetConfig(UNetBackboneConfig):
    hint_channels: int
    # The residuals become their per-channel means over H and W (1.1 shuffle). The original yaml sets it under
    # model.params, not with the ControlNet's own params.
    global_average_pooling: bool = False

    @property
    def num_outputs(self) -> int:
        """Residuals produced: one per input block plus the middle block (13 for SD 1.5)."""
        levels = len(self.channel_mult)
        return 1 + levels * self.num_res_blocks + (levels - 1) + 1


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
    channels: int = 4
    # The dataset item keys training reads the image, the prompt and the control map from.
    first_stage_key: str = "image"
    cond_stage_key: str = "image"
    control_key: str = "hint"

    def __post_init__(self) -> None:
        if self.unet.context_dim != self.cond_stage.hidden_size or self.control.context_dim != self.unet.context_dim:
            raise ConfigError("context_dim of the UNet and ControlNet must equal the text encoder width")
        if self.channels != self.unet.in_channels or self.first_stage.embed_dim != self.unet.in_channels:
            raise ConfigError("latent channels disagree between model, unet_config and first_stage_config")
        shared = [f.name for f in dataclasses.fields(UNetBackboneConfig)]
        diff = [n for n in shared if getattr(self.unet, n) != getattr(self.control, n)]
        if diff:
            raise ConfigError(f"ControlNet must mirror the UNet encoder; these differ: {diff}")


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
    return build_config(VAEConfig, {**params, **ddconfig}, "first_stage_config.params")


def _check_fixed(params: dict) -> None:
    for name, supported in FIXED_MODEL_FIELDS.items():
        if name in params and params.pop(name) != supported:
            raise ConfigError(f"model.params.{name}: only {supported!r} is supported by this implementation")


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
    _check_fixed(params)
    pooling = params.pop("global_average_pooling", False)
    if not isinstance(pooling, bool):
        raise ConfigError(f"model.params.global_average_pooling: expected bool, got {pooling!r}")
    unet = build_config(UNetConfig, _section(subs["unet_config"], "unet_config", "unet_config"),
                        "unet_config.params", IGNORED_UNET_FIELDS)
    control = build_config(ControlNetConfig, _section(subs["control_stage_config"], "control_stage_config",
                                                      "control_stage_config"),
                           "control_stage_config.params", IGNORED_UNET_FIELDS, global_average_pooling=pooling)
    text = build_config(TextEncoderConfig, _section(subs["cond_stage_config"], "cond_stage_config", "cond_stage_config",
                                                    params_required=False), "cond_stage_config.params")
    return build_config(ControlLDMConfig, params, "model.params", IGNORED_MODEL_FIELDS, unet=unet, control=control,
                        first_stage=_vae(subs["first_stage_config"]), cond_stage=text)


def load_config(path: str | Path) -> ControlLDMConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open("r", encoding="utf-8") as f:
        return parse_config(yaml.safe_load(f))
