"""Building a ControlLDM and loading weight files into it.

Three kinds of file are loaded, each into its part of the model (official key names throughout):
* full ControlNet 1.0 files (`control_sd15_*.pth`: SD 1.5 + ControlNet) — `load_full_checkpoint`;
* SD 1.5 bases (`v1-5-pruned.ckpt` with EMA copies, `v1-5-pruned-emaonly.safetensors`) — `load_base`;
* control-only files (ControlNet 1.1 `.pth`, fp16 `.safetensors`; a full 1.0 file also works) — `load_control`.
Tensors are cast to the dtype and device of the model's own. The schedule buffers (top-level keys) and CLIP's
`position_ids` are optional in every file: both are fixed by the config.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from cldm.checkpoint import CheckpointError, PathLike, load_state_dict
from cldm.config import ControlLDMConfig, load_config
from cldm.control_ldm import CONTROL_PREFIX, UNET_PREFIX, ControlLDM
from ldm.schedule import linear_schedule

__all__ = ["CheckpointError", "build_model", "create_model", "load_state_dict", "load_full_checkpoint", "load_base",
           "load_control"]

EMA = "model_ema."
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
EXAMPLES = 3


def build_model(config: ControlLDMConfig) -> ControlLDM:
    """A ControlLDM with fresh weights (build under `torch.device('meta')` to skip allocation)."""
    return ControlLDM(config)


def create_model(yaml_path: PathLike, device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None,
                 init_weights: bool = True) -> nn.Module:
    """A ControlLDM built from an original-schema yaml (random init), moved to `device`/`dtype` when given.

    `init_weights=False` is for callers that load every weight next: the parameters are allocated directly
    in `dtype` on `device` and left uninitialised, which skips the seconds and the fp32 memory of a random
    init of 1.4 B parameters. The schedule buffers are always computed (and stay float32)."""
    config = load_config(yaml_path)
    if init_weights:
        model = build_model(config)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model.eval()
    with torch.device("meta"):
        model = build_model(config)
    for part in model.children():
        part.to(dtype=dtype)
    model = model.to_empty(device=device or "cpu")
    with torch.no_grad():
        for name, value in linear_schedule(config.linear_start, config.linear_end, config.timesteps).items():
            getattr(model, name).copy_(value)
    return model.eval()


def load_full_checkpoint(model: nn.Module, path: PathLike) -> None:
    """Load a file holding every part (SD 1.5 + ControlNet), as the 1.0 apps do (strict)."""
    source = load_state_dict(path)
    _load(model, path, source, _part(model, lambda k: True), ignored=())


def load_base(model: nn.Module, path: PathLike, use_ema: bool = False) -> None:
    """Load an SD 1.5 base (UNet, VAE, text encoder); control weights are left as they are.

    `model_ema.*` keys (v1-5-pruned.ckpt) are ignored like the original does, unless `use_ema`, which takes
    the UNet weights from them (LitEma names: the parameter name without its dots).
    """
    source = load_state_dict(path)
    if use_ema:
        source = _with_ema_unet(path, source)
    _load(model, path, source, _part(model, lambda k: not k.startswith(CONTROL_PREFIX)), ignored=(CONTROL_PREFIX, EMA))


def load_control(model: nn.Module, path: PathLike) -> None:
    """Load ControlNet weights only: `control_model.*` keys of a control-only or a full file.

    Files whose keys lack the `control_model.` prefix (bare ControlNet state dicts) are accepted too.
    """
    source = load_state_dict(path)
    if not any(k.startswith(CONTROL_PREFIX) for k in source) and "input_hint_block.0.weight" in source:
        source = {CONTROL_PREFIX + k: v for k, v in source.items()}
    if not any(k.startswith(CONTROL_PREFIX) for k in source):
        raise CheckpointError(path, f"holds no ControlNet weights ({CONTROL_PREFIX}* keys){_family_hint(source)}")
    source = {k: v for k, v in source.items() if k.startswith(CONTROL_PREFIX)}
    _load(model, path, source, _part(model, lambda k: k.startswith(CONTROL_PREFIX)), ignored=())


def _part(model: nn.Module, keep) -> dict[str, Tensor]:
    return {k: v for k, v in model.state_dict().items() if keep(k)}


def _optional(key: str) -> bool:
    return "." not in key or key == POSITION_IDS


def _with_ema_unet(path: PathLike, source: dict[str, Tensor]) -> dict[str, Tensor]:
    unet = [k for k in source if k.startswith(UNET_PREFIX)]
    ema = {k: EMA + k[len("model."):].replace(".", "") for k in unet}
    absent = [e for e in ema.values() if e not in source]
    if not unet or absent:
        raise CheckpointError(path, f"use_ema=True but the file has no EMA copy of {len(absent) or 'the'} UNet weights "
                                    f"(e.g. {', '.join(absent[:EXAMPLES]) or EMA + '*'})")
    return {**source, **{k: source[e] for k, e in ema.items()}}


def _load(model: nn.Module, path: PathLike, source: dict[str, Tensor], target: dict[str, Tensor], ignored: Iterable[str]) -> None:
    """Copy `source` into the `target` part of `model` after checking names and shapes; one error lists it all."""
    ignored = tuple(ignored)
    missing = [k for k in target if k not in source and not _optional(k)]
    unexpected = [k for k in source if k not in target and not k.startswith(ignored) and not _optional(k)]
    wrong = [k for k in source if k in target and source[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        problems = [
            _listing("missing keys", missing),
            _listing("unexpected keys", unexpected),
            _listing("shape mismatches", [f"{k} (file {list(source[k].shape)}, model {list(target[k].shape)})" for k in wrong]),
        ]
        raise CheckpointError(path, "does not fit the model: " + "; ".join(p for p in problems if p) + _family_hint(source))
    # Tensors whose dtype and device already match are adopted (assign=True): a memory-mapped file then backs
    # the parameters directly (private mapping, no copy). The others are cast while copied into the existing
    # tensors. strict=False: parts outside `target` keep their weights.
    selected = {k: v for k, v in source.items() if k in target}
    adopt = {k: v for k, v in selected.items() if v.dtype == target[k].dtype and v.device == target[k].device}
    model.load_state_dict(adopt, strict=False, assign=True)
    model.load_state_dict({k: v for k, v in selected.items() if k not in adopt}, strict=False)


def _listing(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f", … ({len(keys) - EXAMPLES} more)" if len(keys) > EXAMPLES else ""
    return f"{len(keys)} {what} (e.g. {', '.join(keys[:EXAMPLES])}{more})"


def _family_hint(source: dict[str, Tensor]) -> str:
    """A hint for the common wrong files: SD 2.x (OpenCLIP text encoder, 1024-d context)."""
    sd2 = any(k.startswith("cond_stage_model.model.") for k in source) or any(
        k.endswith("attn2.to_k.weight") and v.ndim == 2 and v.shape[1] == 1024 for k, v in source.items()
    )
    if sd2:
        return ". This looks like a Stable Diffusion 2.x file (OpenCLIP text encoder, context dim 1024); this model is built for SD 1.5 (CLIP ViT-L/14 text encoder, context dim 768)"
    return ""
