"""The SD 1.5 base of the shared model, from whatever form the user has it in.

    name = load_sd_base(model, files, base="my_model.safetensors", vae="vae-ft-mse-840000-ema-pruned.safetensors")

`base` (default: the table's SD 1.5 file, weights key "sd15") may be
* an SD 1.x single file (`.safetensors`, `.ckpt`, `.pth`, `.bin`), EMA or not, with or without the VAE and the
  text encoder; a diffusers-format UNet file also counts;
* a diffusers-format folder (`unet/`, `vae/`, `text_encoder/`, each with its config and weights) or its hub
  repository id (`owner/name`), found in the hub cache or downloaded.
Parts the base lacks (a VAE, a text encoder) come from the default SD 1.5 file, read only then. `vae` replaces
the VAE: a VAE file (`vae-ft-mse-840000-ema-pruned.safetensors`), a diffusers `AutoencoderKL` folder or repo
id, or any checkpoint holding one. A file that is not SD 1.5 (SD 2.x, SDXL, a LoRA, a ControlNet alone) is
refused with a `CheckpointError` that says what it is; nothing is copied into the model before every part fits.
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor, nn

from cldm.checkpoint import CheckpointError
from cldm.config import ControlLDMConfig
from cldm.model import PART_NAMES, PARTS, load_parts, read_parts
from weights.files import WeightFiles, WeightsUnavailable
from weights.table import WEIGHTS

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PART_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin"),
}
Parts = dict[str, tuple[Path, dict[str, Tensor]]]


def load_sd_base(model: nn.Module, files: WeightFiles, base: str | Path | None = None, vae: str | Path | None = None) -> str:
    """Load the SD 1.5 base parts into `model` (see the module docstring); returns what was loaded, in words."""
    parts, name = read_sd_base(files, model.config, base, vae)
    load_parts(model, parts)
    return name


def read_sd_base(files: WeightFiles, config: ControlLDMConfig, base: str | Path | None = None,
                 vae: str | Path | None = None) -> tuple[Parts, str]:
    """The base parts ({part: (file, state dict)}) and what they are, in words, read and checked without a model:
    a wrong file is refused before one is built."""
    replaced = {"vae": _vae_part(vae, files, config)} if vae is not None else {}  # the user's files are read first
    parts = _file_parts(files.resolve("sd15"), config) if base is None else _base_parts(base, files, config)
    parts |= replaced
    missing = [part for part in PARTS if part not in parts]
    if missing:
        fallback = _file_parts(files.resolve("sd15"), config)
        parts |= {part: fallback[part] for part in missing}
    return parts, describe(base, vae, parts, missing)


def describe(base: str | Path | None, vae: str | Path | None, parts: Parts, fallback: list[str]) -> str:
    """E.g. "my_model.safetensors (VAE: vae-ft-mse.safetensors; text encoder: v1-5-pruned-emaonly.safetensors)"."""
    name = Path(base).name if base is not None and Path(base).exists() else str(base) if base is not None else None
    name = name or parts["unet"][0].name
    others = [f"{PART_NAMES[p]}: {_short(parts[p][0])}" for p in PARTS if p in fallback or (p == "vae" and vae is not None)]
    return f"{name} ({'; '.join(others)})" if others else name


def _short(path: Path) -> str:
    """A file's name; a diffusers part (folder or its weights file) as <model folder>/<part>."""
    if path.name in PARTS:
        return f"{path.parent.name}/{path.name}"
    return f"{path.parent.parent.name}/{path.parent.name}" if path.parent.name in PARTS else path.name


def _file_parts(path: Path, config) -> Parts:
    return {part: (path, state) for part, state in read_parts(path, config).items()}


def _base_parts(base: str | Path, files: WeightFiles, config) -> Parts:
    path = Path(base).expanduser()
    if path.is_file() or (path.is_dir() and not any((path / part).is_dir() for part in PARTS)):
        parts = _file_parts(path, config)  # a single file, or a single part's folder (e.g. a diffusers UNet)
        if "unet" not in parts:
            held = ", ".join(PART_NAMES[p] for p in parts)
            raise CheckpointError(path, f"holds no UNet, only the {held}; a base needs one (a VAE goes with --vae)")
        return parts
    if path.is_dir():
        parts = {}
        for part in PARTS:
            if (path / part).is_dir():
                parts[part] = (path / part, _the_part(path / part, part, config))
        if "unet" not in parts:
            raise CheckpointError(path, "is a diffusers-format folder without unet/")
        return parts
    if REPO_ID.match(str(base)):
        return _repo_parts(str(base), files, config)
    raise CheckpointError(path, "no such file or folder, and not a hub repository id (owner/name) either")


def _repo_parts(repo: str, files: WeightFiles, config) -> Parts:
    """The parts of a diffusers-format repository: the UNet is required, a VAE or text encoder the repository
    does not have comes from the default SD 1.5 file."""
    parts = {}
    for part, names in PART_FILES.items():
        try:
            path = files.resolve_repo(repo, [f"{part}/{name}" for name in names], f"{repo} {PART_NAMES[part]}")
        except WeightsUnavailable:
            if part == "unet":
                raise
            continue
        parts[part] = (path, _the_part(path, part, config))
    return parts


def _the_part(path: Path, part: str, config) -> dict[str, Tensor]:
    found = read_parts(path, config, base=False)
    if part not in found:
        held = ", ".join(PART_NAMES[p] for p in found) or "nothing"
        raise CheckpointError(path, f"should hold the SD 1.5 {PART_NAMES[part]}, holds {held}")
    return found[part]


def _vae_part(vae: str | Path, files: WeightFiles, config) -> tuple[Path, dict[str, Tensor]]:
    path = Path(vae).expanduser()
    if not path.exists() and REPO_ID.match(str(vae)):
        path = files.resolve_repo(str(vae), list(PART_FILES["vae"]), f"{vae} VAE")
    elif not path.exists():
        raise CheckpointError(path, "no such file or folder, and not a hub repository id (owner/name) either")
    return path, _the_part(path, "vae", config)


def describe_request(base: str | Path | None, vae: str | Path | None) -> str:
    """What will be loaded, before it is: the base's name, and the VAE's if one is given."""
    name = Path(base).name if base is not None else WEIGHTS["sd15"].basename
    return f"{name} (VAE: {Path(vae).name})" if vae is not None else name
