"""Text + control map(s) → images: the one generation path of the apps, the CLI and the multi-condition app.

Follows the original apps' `process`: text = prompt + ", " + a_prompt, unconditional text = n_prompt, control
map /255 repeated per sample (the hint), DDIM (or another sampler of `cldm.samplers.SAMPLERS`) with
classifier-free guidance, decode, x·127.5 + 127.5 clipped to
uint8. Seeds drive a CPU `torch.Generator` (x_T and eta noise), so a seed gives the same images on any device;
seed −1 draws one in [0, 65535] like the original.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from cldm import limits
from cldm.control import ControlledDenoiser, ControlMode, ControlUnit
from cldm.ddim import StepCallback, guided_model_fn, initial_noise, model_alphas_cumprod
from cldm.samplers import SAMPLERS

DEFAULT_A_PROMPT = "best quality, extremely detailed"
DEFAULT_N_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
                    "cropped, worst quality, low quality")


class GenerationInputError(ValueError):
    """An invalid generation parameter or control map; the message says which and why."""


def _check_range(name: str, value: float, limit: limits.Limit) -> None:
    if not limit.contains(value):
        raise GenerationInputError(f"{name} must be between {limit.minimum} and {limit.maximum}, got {value}")


@dataclass(frozen=True)
class GenerationParams:
    """The apps' generation controls, validated on construction against `cldm.limits`."""

    prompt: str
    a_prompt: str = DEFAULT_A_PROMPT
    n_prompt: str = DEFAULT_N_PROMPT
    num_samples: int = limits.NUM_SAMPLES.default
    image_resolution: int = limits.IMAGE_RESOLUTION.default
    steps: int = limits.STEPS.default
    guess_mode: bool = False
    strength: float = limits.STRENGTH.default
    scale: float = limits.GUIDANCE_SCALE.default
    seed: int = limits.SEED.default
    eta: float = limits.ETA.default
    sampler: str = limits.DEFAULT_SAMPLER

    def __post_init__(self) -> None:
        for name in ("prompt", "a_prompt", "n_prompt"):
            if not isinstance(getattr(self, name), str):
                raise GenerationInputError(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        for names, kinds, what in ((("num_samples", "image_resolution", "steps", "seed"), (int, np.integer), "an integer"),
                                   (("strength", "scale", "eta"), (int, float, np.integer, np.floating), "a number")):
            for name in names:
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, kinds):
                    raise GenerationInputError(f"{name} must be {what}, got {value!r}")
        if not isinstance(self.guess_mode, (bool, np.bool_)):
            raise GenerationInputError(f"guess_mode must be true or false, got {self.guess_mode!r}")
        for name, limit in (("num_samples", limits.NUM_SAMPLES), ("image_resolution", limits.IMAGE_RESOLUTION),
                            ("steps", limits.STEPS), ("strength", limits.STRENGTH), ("scale", limits.GUIDANCE_SCALE),
                            ("seed", limits.SEED), ("eta", limits.ETA)):
            _check_range(name, getattr(self, name), limit)
        if not isinstance(self.sampler, str) or self.sampler not in SAMPLERS:
            raise GenerationInputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.steps > limits.MAX_STEPS.get(self.sampler, limits.STEPS.maximum):
            raise GenerationInputError(f"steps must be at most {limits.MAX_STEPS[self.sampler]} with the "
                                       f"{SAMPLERS[self.sampler].label} sampler, got {self.steps}")

    def resolved_seed(self) -> int:
        return random.randint(0, limits.RANDOM_SEED_RANGE) if self.seed == -1 else int(self.seed)


@dataclass(frozen=True)
class GenerationResult:
    images: list[np.ndarray]  # num_samples × (H, W, 3) uint8
    seed: int


def check_control_map(control_map: np.ndarray, name: str = "control map") -> None:
    if not isinstance(control_map, np.ndarray) or control_map.dtype != np.uint8 or control_map.ndim != 3 \
            or control_map.shape[2] != 3:
        shape = getattr(control_map, "shape", None)
        raise GenerationInputError(f"{name} must be an H×W×3 uint8 array, got {type(control_map).__name__} {shape}")
    h, w = control_map.shape[:2]
    if h == 0 or w == 0 or h % 64 or w % 64:
        raise GenerationInputError(f"{name} height and width must be positive multiples of 64, got {h}×{w}")


def generate(model: nn.Module, control_map: np.ndarray, params: GenerationParams,
             callback: Optional[StepCallback] = None, decoder: Optional[nn.Module] = None) -> GenerationResult:
    """One ControlNet (`model.control_model`) at `params.strength`, guess mode when `params.guess_mode`."""
    unit = ControlUnit(model.control_model, control_map, params.strength)
    mode = ControlMode.GUESS if params.guess_mode else ControlMode.BALANCED
    return generate_multi(model, [unit], params, mode, callback, decoder)


def generate_multi(model: nn.Module, units: list[ControlUnit], params: GenerationParams, mode: ControlMode | str,
                   callback: Optional[StepCallback] = None, decoder: Optional[nn.Module] = None) -> GenerationResult:
    """Several ControlNets at once (see `cldm.control`); each unit's strength replaces `params.strength`, `mode`
    replaces `params.guess_mode`. `callback(i, total, x, x0)` returning False cancels (`SamplingCancelled`).
    `decoder`: another latent decoder with a `decode(latents)` giving [-1, 1] images (e.g. TAESD), instead of
    the model's VAE."""
    if mode not in set(ControlMode):
        raise GenerationInputError(f"control mode must be one of {[m.value for m in ControlMode]}, got {mode!r}")
    mode = ControlMode(mode)
    _check_units(units)
    device, dtype = model.device, model.dtype
    alphas_cumprod = model_alphas_cumprod(model)
    seed = params.resolved_seed()
    generator = torch.Generator().manual_seed(seed)
    n = params.num_samples
    h, w = units[0].control_map.shape[:2]

    with torch.no_grad():
        model.low_vram_shift(is_diffusing=False)
        cond = {"c_concat": [hint_tensor(u.control_map, n, device, dtype) for u in units],
                "c_crossattn": [model.get_learned_conditioning([params.prompt + ", " + params.a_prompt] * n)]}
        uncond = None
        if params.scale > 1.0:
            uncond = {"c_concat": cond["c_concat"] if mode.controls_unconditional else None,
                      "c_crossattn": [model.get_learned_conditioning([params.n_prompt] * n)]}
        sampler = SAMPLERS[params.sampler]
        timesteps = sampler.schedule(params.steps, alphas_cumprod)
        model_fn = guided_model_fn(ControlledDenoiser(model, units, mode, timesteps), cond, uncond, params.scale)

        model.low_vram_shift(is_diffusing=True)
        down = model.config.first_stage.downscale
        x_t = initial_noise((n, model.config.channels, h // down, w // down), generator, device)
        latents = sampler.sample(model_fn, x_t, timesteps, alphas_cumprod, params.eta, generator, callback)
        model.low_vram_shift(is_diffusing=False)
        decoded = (decoder.decode(latents) if decoder is not None else model.decode_first_stage(latents.to(dtype))).float()
    pixels = (decoded.permute(0, 2, 3, 1) * 127.5 + 127.5).cpu().numpy().clip(0, 255).astype(np.uint8)
    return GenerationResult(images=list(pixels), seed=seed)


def _check_units(units: list[ControlUnit]) -> None:
    if not units:
        raise GenerationInputError("at least one control unit is needed")
    for k, unit in enumerate(units):
        check_control_map(unit.control_map, f"control map {k + 1}")
        _check_range(f"strength of control {k + 1}", unit.strength, limits.STRENGTH)
        if not 0.0 <= unit.start < unit.end <= 1.0:
            raise GenerationInputError(f"control {k + 1}: need 0 <= start < end <= 1, got start {unit.start}, end {unit.end}")
    if len({u.control_map.shape for u in units}) > 1:
        raise GenerationInputError(f"control maps differ in size: {[u.control_map.shape[:2] for u in units]}")


def hint_tensor(control_map: np.ndarray, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The ControlNet's input: the H×W×3 uint8 map as an N×3×H×W tensor in [0, 1], repeated per sample."""
    hint = torch.from_numpy(control_map.copy()).to(device=device, dtype=torch.float32) / 255.0
    return hint.permute(2, 0, 1).unsqueeze(0).repeat(n, 1, 1, 1).to(dtype)
