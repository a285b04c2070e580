"""Building a ControlLDM and loading weight files into it.

The model has four parts, each loaded from whatever file holds it (official key names throughout):
* the UNet (`model.diffusion_model.*`), the VAE (`first_stage_model.*`) and the text encoder
  (`cond_stage_model.transformer.*`) form the SD 1.5 base: `load_base` reads a whole base file (`v1-5-pruned.ckpt`
  with EMA copies, `v1-5-pruned-emaonly.safetensors`), `read_parts` + `load_parts` any subset of them from any
  file (a base without VAE, a VAE file, a diffusers-format part);
* the ControlNet (`control_model.*`): `load_control` reads a control-only file (ControlNet 1.1 `.pth`, fp16
  `.safetensors` with or without the `control_model.` prefix), a full 1.0 file, or a diffusers-format ControlNet
  (its folder or its weights file);
* `load_full_checkpoint` reads all four from one file, as the 1.0 apps do.
Diffusers-format files are converted by `cldm.diffusers_names.to_original`. Names and shapes are checked for the
whole part before any tensor is copied: a file that does not fit leaves the model as it was. Tensors are cast to
the dtype and device of the model's own. The schedule buffers (top-level keys) and CLIP's `position_ids` are
optional in every file: both are fixed by the config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from cldm.checkpoint import CheckpointError, PathLike, load_state_dict
from cldm.checkpoint_kinds import family, is_controlnet, is_lora, not_an_sd15_base
from cldm.config import ControlLDMConfig, load_config
from cldm.control_ldm import CONTROL_PREFIX, UNET_PREFIX, ControlLDM
from cldm.diffusers_names import diffusers_part, to_original
from ldm.schedule import linear_schedule

__all__ = ["CheckpointError", "build_model", "create_model", "load_state_dict", "load_full_checkpoint", "load_base",
           "load_control", "read_parts", "load_parts", "diffusers_weights", "PARTS"]

EMA = "model_ema."
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
EXAMPLES = 3
# The parts of an SD 1.5 base: name -> key prefix.
PARTS = {"unet": UNET_PREFIX, "vae": "first_stage_model.", "text_encoder": "cond_stage_model.transformer."}
PART_NAMES = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder", "controlnet": "ControlNet"}
BARE_VAE = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# A diffusers-format folder's weights file, in order of preference.
DIFFUSERS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                   "model.safetensors", "model.fp16.safetensors", "diffusion_pytorch_model.bin",
                   "diffusion_pytorch_model.fp16.bin", "pytorch_model.bin", "pytorch_model.fp16.bin")


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
    """Load a whole SD 1.5 base (UNet, VAE, text encoder) from one file; control weights are left as they are.

    `model_ema.*` keys (v1-5-pruned.ckpt) are ignored like the original does, unless `use_ema`, which takes
    the UNet weights from them (LitEma names: the parameter name without its dots).
    """
    source = load_state_dict(path)
    if use_ema:
        source = _with_ema_unet(list(_part(model, lambda k: k.startswith(UNET_PREFIX))), path, source)
    _load(model, path, source, _part(model, lambda k: not k.startswith(CONTROL_PREFIX)), ignored=(CONTROL_PREFIX, EMA))


def refuse_non_sd15(path: PathLike, source: dict[str, Tensor]) -> None:
    what = not_an_sd15_base({k: v.shape for k, v in source.items()})
    if what:
        raise CheckpointError(path, f"is {what}, not an SD 1.5 base" if what.startswith("a") else what)


def read_parts(path: PathLike, config: ControlLDMConfig, use_ema: bool = False, base: bool = True
               ) -> dict[str, dict[str, Tensor]]:
    """The base parts ("unet", "vae", "text_encoder") a file or diffusers folder holds, with this repository's keys.

    Reads SD 1.x single files (with or without VAE / text encoder, EMA copies ignored unless `use_ema`, or used
    when they are the only UNet), VAE files (bare `encoder.*`/`decoder.*` keys, `first_stage_model.*`, or diffusers
    `AutoencoderKL`), and diffusers-format parts (a part folder or its weights file). As a `base`, a file that is
    not SD 1.x (SD 2.x, SDXL, a LoRA, a ControlNet alone) is refused with a message that says what it is; for a
    single part (`base=False`, e.g. a VAE from any checkpoint) the caller checks that the part is there.
    """
    path = Path(path)
    file = diffusers_weights(path) if path.is_dir() else path
    source = load_state_dict(file)
    part = diffusers_part(source)
    if part is not None:
        what = family({k: v.shape for k, v in source.items()})
        if what or part == "controlnet":
            raise CheckpointError(file, f"is {what or 'a ControlNet'}, not a part of an SD 1.5 base")
        converted, unknown = to_original(source, part, config)
        if unknown:
            raise CheckpointError(file, f"does not fit the SD 1.5 {PART_NAMES[part]}: "
                                        + _listing("unknown diffusers keys", unknown))
        return {part: converted}
    if any(k.startswith(BARE_VAE) for k in source) and not any(k.startswith(tuple(PARTS.values())) for k in source):
        if base:
            refuse_non_sd15(file, source)
        source = {PARTS["vae"] + k: v for k, v in source.items() if k.startswith(BARE_VAE)}  # e.g. vae-ft-mse-*.ckpt
        return {"vae": source}
    if use_ema or (not any(k.startswith(UNET_PREFIX) for k in source) and any(k.startswith(EMA) for k in source)):
        source = _with_ema_unet(unet_names(config), file, source)
    if base:
        refuse_non_sd15(file, source)
    text = PARTS["text_encoder"]
    if any(k.startswith(text + "embeddings.") for k in source):  # saved by transformers < 4.22: no text_model level
        source = {(text + "text_model." + k[len(text):] if k.startswith(text) else k): v for k, v in source.items()}
    parts = {name: {k: v for k, v in source.items() if k.startswith(prefix)} for name, prefix in PARTS.items()}
    return {name: state for name, state in parts.items() if state}


def unet_names(config: ControlLDMConfig) -> list[str]:
    """The UNet's parameter names (`model.diffusion_model.*`), from a model built on the meta device."""
    with torch.device("meta"):
        return [k for k in build_model(config).state_dict() if k.startswith(UNET_PREFIX)]


def load_parts(model: nn.Module, parts: dict[str, tuple[PathLike, dict[str, Tensor]]]) -> None:
    """Load base parts ({part: (file it came from, state dict with this repository's keys)}); every part is
    checked before any is copied, so a file that does not fit leaves the model as it was."""
    checked = []
    for part, (path, source) in parts.items():
        prefix = PARTS[part]
        target = _part(model, lambda k: k.startswith(prefix))
        _check(path, source, target, ignored=(), what=f"the SD 1.5 {PART_NAMES[part]}")
        checked.append((source, target))
    for source, target in checked:
        _copy(model, source, target)


def load_control(model: nn.Module, path: PathLike) -> None:
    """Load ControlNet weights only: the `control_model.*` keys of a control-only or a full file, the same keys
    without their prefix (fp16 files of the WebUI community), or a diffusers-format ControlNet (its folder, with
    `config.json` and `diffusion_pytorch_model.safetensors`, or that file)."""
    path = Path(path)
    file = diffusers_weights(path) if path.is_dir() else path
    source = load_state_dict(file)
    if "difference" in source:
        raise CheckpointError(file, "is a difference ControlNet (ControlNet minus its SD base); use the full weights")
    if diffusers_part(source) == "controlnet":
        source, unknown = to_original(source, "controlnet", model.config)
        if unknown:
            raise CheckpointError(file, "does not fit the ControlNet: " + _listing("unknown diffusers keys", unknown))
    elif not any(k.startswith(CONTROL_PREFIX) for k in source) and "input_hint_block.0.weight" in source:
        source = {CONTROL_PREFIX + k: v for k, v in source.items()}
    if not any(k.startswith(CONTROL_PREFIX) for k in source):
        raise CheckpointError(file, f"holds no ControlNet weights ({CONTROL_PREFIX}* keys){_what_instead(source)}")
    source = {k: v for k, v in source.items() if k.startswith(CONTROL_PREFIX)}
    _load(model, file, source, _part(model, lambda k: k.startswith(CONTROL_PREFIX)), ignored=())


def diffusers_weights(folder: PathLike) -> Path:
    """The weights file of a diffusers-format model folder (`config.json` next to it)."""
    folder = Path(folder)
    for name in DIFFUSERS_FILES:
        if (folder / name).is_file():
            return folder / name
    has = "a config.json but" if (folder / "config.json").is_file() else "no config.json and"
    raise CheckpointError(folder, f"is a folder with {has} no weights file ({', '.join(DIFFUSERS_FILES[:2])}, …)")


def _part(model: nn.Module, keep) -> dict[str, Tensor]:
    return {k: v for k, v in model.state_dict().items() if keep(k)}


def _optional(key: str) -> bool:
    return "." not in key or key == POSITION_IDS


def _with_ema_unet(names: list[str], path: PathLike, source: dict[str, Tensor]) -> dict[str, Tensor]:
    """`source` with the UNet weights `names` taken from their LitEma copies (`model_ema.<name without dots>`)."""
    ema = {k: EMA + k[len("model."):].replace(".", "") for k in names}
    absent = [e for e in ema.values() if e not in source]
    if absent:
        raise CheckpointError(path, f"use_ema=True but the file has no EMA copy of {len(absent)} UNet weights "
                                    f"(e.g. {', '.join(absent[:EXAMPLES])})")
    return {**source, **{k: source[e] for k, e in ema.items()}}


def _load(model: nn.Module, path: PathLike, source: dict[str, Tensor], target: dict[str, Tensor], ignored: Iterable[str]) -> None:
    """Copy `source` into the `target` part of `model` after checking names and shapes; one error lists it all."""
    _check(path, source, target, ignored)
    _copy(model, source, target)


def _check(path: PathLike, source: dict[str, Tensor], target: dict[str, Tensor], ignored: Iterable[str],
           what: str = "the model") -> None:
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
        raise CheckpointError(path, f"does not fit {what}: " + "; ".join(p for p in problems if p) + _family_hint(source))


def _copy(model: nn.Module, source: dict[str, Tensor], target: dict[str, Tensor]) -> None:
    # Tensors whose dtype and device already match are adopted (assign=True): a memory-mapped file then backs
    # the parameters directly (private mapping, no copy). The others are cast while copied into the existing
    # tensors. strict=False: parts outside `target` keep their weights.
    selected = {k: v for k, v in source.items() if k in target}
    adopt = {k: v for k, v in selected.items() if v.dtype == target[k].dtype and v.device == target[k].device}
    if 2 * sum(v.nbytes for v in adopt.values()) < sum(v.nbytes for v in selected.values()):
        # Mostly cast (an fp32 file into a bf16 model): adopting the few matching tensors (the fp32 schedule
        # buffers) would keep the whole mapped file, pages already read for the cast, resident for their sake.
        adopt = {}
    model.load_state_dict(adopt, strict=False, assign=True)
    model.load_state_dict({k: v for k, v in selected.items() if k not in adopt}, strict=False)


def _listing(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f", … ({len(keys) - EXAMPLES} more)" if len(keys) > EXAMPLES else ""
    return f"{len(keys)} {what} (e.g. {', '.join(keys[:EXAMPLES])}{more})"


def _family_hint(source: dict[str, Tensor]) -> str:
    """What the file is when it is an SD 2.x / SDXL file (OpenCLIP text encoder, wider context) or a LoRA."""
    shapes = {k: v.shape for k, v in source.items()}
    what = family(shapes)
    if what:
        return f". This looks like {what}; this model is built for SD 1.5 (CLIP ViT-L/14 text encoder, context dim 768)"
    return ". This looks like a LoRA (low-rank updates), not a model" if is_lora(shapes) else ""


def _what_instead(source: dict[str, Tensor]) -> str:
    shapes = {k: v.shape for k, v in source.items()}
    if is_lora(shapes):
        return "; it is a LoRA"
    what = not_an_sd15_base(shapes)
    if what is None:
        return "; it is an SD 1.5 base"
    return "; it is " + what if what.startswith("a") and not is_controlnet(shapes) else ""
