"""Weight surgery behind `tool_add_control.py` and `tool_transfer_control.py`, on plain state dicts.

* `add_control`: a fresh ControlLDM state dict filled from a Stable Diffusion checkpoint; every
  `control_model.X` is copied from its `model.diffusion_model.X` twin, every other key by its own name.
* `transfer_control`: move a ControlNet trained on SD 1.5 onto another SD 1.5-derived base with the
  original's difference rule, ``control + (new_base - sd15)``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from cldm.control_ldm import CONTROL_PREFIX

BASE_ONLY_PREFIXES = ("first_stage_model.", "cond_stage_model.")
# Keys an SD checkpoint may lack without being a different architecture: the schedule buffers (recomputed
# identically by every model) and the CLIP position ids (dropped by newer transformers releases).
OPTIONAL_SUFFIXES = ("embeddings.position_ids",)
MAX_LISTED = 12

StateDict = Mapping[str, torch.Tensor]


class ToolError(ValueError):
    """An input file that cannot be used for the requested conversion."""


def unet_twin(key: str) -> str:
    """The SD name a key is taken from: `control_model.X` -> `model.diffusion_model.X`, anything else unchanged."""
    if key.startswith("control_"):  # the original's rule: replace the leading "control_"
        return "model.diffusion_" + key[len("control_"):]
    return key


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    more = len(keys) - MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _is_optional(key: str) -> bool:
    return "." not in key or key.endswith(OPTIONAL_SUFFIXES)


@dataclass
class AddControlResult:
    state_dict: dict[str, torch.Tensor]
    copied: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # ControlNet-only keys that keep their fresh initialisation
    defaulted: list[str] = field(default_factory=list)  # optional keys the checkpoint lacked (kept fresh)


def add_control(sd: StateDict, fresh: StateDict) -> AddControlResult:
    """Fill the fresh ControlLDM state dict ``fresh`` from the SD checkpoint ``sd``.

    Raises `ToolError` when ``sd`` lacks SD keys the architecture needs or has tensors of the wrong shape.
    """
    result = AddControlResult(state_dict={})
    missing, mismatched = [], []
    for key, value in fresh.items():
        source = unet_twin(key)
        if source in sd:
            src = sd[source]
            if tuple(src.shape) != tuple(value.shape):
                mismatched.append(f"{source} {tuple(src.shape)} (expected {tuple(value.shape)})")
                continue
            result.state_dict[key] = src.detach().to(dtype=value.dtype, device="cpu")
            result.copied.append(key)
            continue
        result.state_dict[key] = value.detach().to("cpu")
        if key.startswith(CONTROL_PREFIX) and source not in fresh:
            result.new.append(key)
        elif _is_optional(key):
            result.defaulted.append(key)
        else:
            missing.append(source)
    if mismatched:
        raise ToolError(
            f"the Stable Diffusion checkpoint has {len(mismatched)} tensor(s) of the wrong shape for this "
            f"architecture: {_listing(mismatched)}"
        )
    if missing:
        raise ToolError(
            f"the Stable Diffusion checkpoint lacks {len(missing)} key(s) this architecture needs "
            f"(is it an SD 1.5 checkpoint for this config?): {_listing(missing)}"
        )
    return result


def zero_initialised_keys(state: StateDict) -> list[str]:
    """The ControlNet keys that start at exactly zero: the zero convolutions and the hint encoder's last conv."""
    zero = [k for k in state if k.startswith((CONTROL_PREFIX + "zero_convs.", CONTROL_PREFIX + "middle_block_out."))]
    hint_prefix = CONTROL_PREFIX + "input_hint_block."
    hint_layers = sorted({int(k[len(hint_prefix):].split(".")[0]) for k in state if k.startswith(hint_prefix)})
    if hint_layers:
        last = f"{hint_prefix}{hint_layers[-1]}."
        zero += [k for k in state if k.startswith(last)]
    return zero


def transfer_control(sd15: StateDict, control: StateDict, new_base: StateDict) -> dict[str, torch.Tensor]:
    """Move ``control`` (trained on ``sd15``) onto ``new_base`` with the original's rule.

    VAE and text-encoder keys come verbatim from the new base; every other key is mapped to its UNet twin; if
    the twin exists in the new base the result is ``control + (new_base - sd15)`` (computed in float32, stored in
    the control file's dtype), else (and for the schedule buffers) the control value is kept. A control-only file gives a control-only result.
    """
    out: dict[str, torch.Tensor] = {}
    lacking_base, lacking_sd15, mismatched = [], [], []
    for key, value in control.items():
        if key.startswith(BASE_ONLY_PREFIXES):
            if key not in new_base:
                if not _is_optional(key):
                    lacking_base.append(key)
                out[key] = value
            else:
                out[key] = new_base[key]
            continue
        twin = unet_twin(key)
        if twin not in new_base or not value.is_floating_point() or _is_optional(key):
            out[key] = value
            continue
        if twin not in sd15:
            lacking_sd15.append(twin)
            continue
        base, old = new_base[twin], sd15[twin]
        if not (tuple(base.shape) == tuple(old.shape) == tuple(value.shape)):
            mismatched.append(f"{key}: control {tuple(value.shape)}, base {tuple(base.shape)}, sd15 {tuple(old.shape)}")
            continue
        out[key] = (value.float() + (base.float() - old.float())).to(value.dtype)
    if lacking_base:
        raise ToolError(f"the new base lacks {len(lacking_base)} VAE/text-encoder key(s): {_listing(lacking_base)}")
    if lacking_sd15:
        raise ToolError(
            f"the SD 1.5 file lacks {len(lacking_sd15)} key(s) the new base has (is it the SD 1.5 base?): "
            f"{_listing(lacking_sd15)}"
        )
    if mismatched:
        raise ToolError(f"{len(mismatched)} tensor(s) differ in shape between the files: {_listing(mismatched)}")
    return out


def refuse_existing(path: str | Path) -> Path:
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    if path.suffix != ".safetensors":
        raise ToolError(f"output {path} must end in .safetensors (only safetensors files are written)")
    return path


def save_state_dict(state: StateDict, path: str | Path) -> Path:
    """Write ``state`` as safetensors at a path that must not exist yet."""
    path = refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))
    return path


# ----------------------------------------------------------------------------------------------------------------
# File-level entry points used by the two tool scripts.

def add_control_file(sd_path: str | Path, out: str | Path, config: str | Path) -> AddControlResult:
    """Build a fresh ControlLDM from ``config``, fill it from the SD checkpoint at ``sd_path``, write ``out``."""
    from cldm.model import create_model, load_state_dict

    refuse_existing(out)
    sd = load_state_dict(sd_path)
    model = create_model(config)
    result = add_control(sd, model.state_dict())
    not_zero = [k for k in zero_initialised_keys(result.state_dict) if result.state_dict[k].count_nonzero()]
    if not_zero:
        raise RuntimeError(f"the fresh ControlNet has non-zero zero-initialised layers: {_listing(not_zero)}")
    model.load_state_dict(result.state_dict, strict=True)
    save_state_dict(model.state_dict(), out)  # the model's own tensors: twins no longer share memory
    return result


def transfer_control_files(sd15: str | Path, control: str | Path, base: str | Path, out: str | Path) -> dict[str, torch.Tensor]:
    """`transfer_control` on three weight files; writes and returns the result."""
    from cldm.model import load_state_dict

    refuse_existing(out)
    result = transfer_control(load_state_dict(sd15), load_state_dict(control), load_state_dict(base))
    save_state_dict(result, out)
    return result
