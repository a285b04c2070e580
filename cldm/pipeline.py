"""Text + control map(s) → images: the one generation path of the apps, the CLI and the multi-condition app.

Follows the original apps' `process`: text = prompt + ", " + a_prompt, unconditional text = n_prompt, control
map /255 repeated per sample (the hint), DDIM (or another sampler of `cldm.samplers.SAMPLERS`) with
classifier-free guidance, decode, x·127.5 + 127.5 clipped to
uint8. Seeds drive a CPU `torch.Generator` (x_T and eta noise), so a seed gives the same images on any device;
seed −1 draws one in [0, 65535] like the original.

Starting from an image (`init`, the ControlNet 1.1 tile and inpaint apps; see `cldm.img2img`): `Img2Img` noises
the image latent to a level set by `denoise` and samples from there; `Inpaint` samples from noise but keeps the
unmasked latent on the noised image at every step, then pastes the generated pixels into the image with the soft
mask. Draws from the generator, in order: the VAE posterior sample (both), the img2img noise or x_T, then per step
the mask's re-noising draw (inpaint) and the sampler's own.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from cldm import limits
from cldm.allocator import release_free_memory
from cldm.control import ControlledDenoiser, ControlMode, ControlUnit
from cldm.ddim import StepCallback, guided_model_fn, initial_noise, model_alphas_cumprod
from cldm.img2img import LatentMask, composite, encode_image, hint_mask, latent_keep_mask
from cldm.samplers import SAMPLERS, Sampler

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
    prompt_chunks: int = 1  # 3: prompts of up to 3×75 tokens, encoded as 3×77 (the 1.1 anime-lineart model)
    clip_skip: int = 1  # 2: the text encoder's second-to-last layer (then its final LayerNorm)

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
        for name, allowed in (("prompt_chunks", limits.PROMPT_CHUNKS), ("clip_skip", limits.CLIP_SKIPS)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in allowed:
                raise GenerationInputError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        for name, limit in (("num_samples", limits.NUM_SAMPLES), ("image_resolution", limits.LARGE_IMAGE_RESOLUTION),
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
class Img2Img:
    """Start from `image` noised to a level set by `denoise` (1: the sampler's whole schedule, or DDIM's whole
    less one step; see `cldm.samplers.ddim_img2img`)."""

    image: np.ndarray  # H×W×3 uint8 at the output size
    denoise: float  # (0, 1]


@dataclass(frozen=True)
class Inpaint:
    """Repaint where `mask` is 1, keep `image` where it is 0 (soft in between)."""

    image: np.ndarray  # H×W×3 uint8 at the output size
    mask: np.ndarray  # H×W float32 in [0, 1], 1 = repaint, already resized to H×W and blurred by the caller


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
             callback: Optional[StepCallback] = None, decoder: Optional[nn.Module] = None, *,
             mode: ControlMode | str | None = None, init: Img2Img | Inpaint | None = None) -> GenerationResult:
    """One ControlNet (`model.control_model`) at `params.strength`; `mode` None: guess mode when
    `params.guess_mode`, else balanced. With `init=Inpaint(...)` the hint is −1 where its mask exceeds 0.5."""
    masked = None
    if isinstance(init, Inpaint):
        check_control_map(control_map)
        _check_init(init, control_map.shape[:2])
        masked = hint_mask(init.mask)
    unit = ControlUnit(model.control_model, control_map, params.strength, hint_mask=masked)
    if mode is None:
        mode = ControlMode.GUESS if params.guess_mode else ControlMode.BALANCED
    return generate_multi(model, [unit], params, mode, callback, decoder, init=init)


def generate_multi(model: nn.Module, units: list[ControlUnit], params: GenerationParams, mode: ControlMode | str,
                   callback: Optional[StepCallback] = None, decoder: Optional[nn.Module] = None, *,
                   init: Img2Img | Inpaint | None = None) -> GenerationResult:
    """Several ControlNets at once (see `cldm.control`); each unit's strength replaces `params.strength`, `mode`
    replaces `params.guess_mode`. `callback(i, total, x, x0)` returning False cancels (`SamplingCancelled`).
    `decoder`: another latent decoder with a `decode(latents)` giving [-1, 1] images (e.g. TAESD), instead of
    the model's VAE. `init`: start from an image (module docstring); the units' hints are used as given (an
    inpaint unit sets its own `hint_mask`)."""
    if mode not in set(ControlMode):
        raise GenerationInputError(f"control mode must be one of {[m.value for m in ControlMode]}, got {mode!r}")
    mode = ControlMode(mode)
    _check_units(units)
    h, w = units[0].control_map.shape[:2]
    sampler = SAMPLERS[params.sampler]
    _check_init(init, (h, w), sampler)
    device, dtype = model.device, model.dtype
    alphas_cumprod = model_alphas_cumprod(model)
    seed = params.resolved_seed()
    generator = torch.Generator().manual_seed(seed)
    n = params.num_samples
    text = {"chunks": params.prompt_chunks, "clip_skip": params.clip_skip}

    with torch.no_grad():
        model.low_vram_shift(is_diffusing=False)
        cond = {"c_concat": [hint_tensor(u.control_map, n, device, dtype, u.hint_mask) for u in units],
                "c_crossattn": [model.get_learned_conditioning([params.prompt + ", " + params.a_prompt] * n, **text)]}
        uncond = None
        if params.scale > 1.0:
            uncond = {"c_concat": cond["c_concat"] if mode.controls_unconditional else None,
                      "c_crossattn": [model.get_learned_conditioning([params.n_prompt] * n, **text)]}
        timesteps = sampler.schedule(params.steps, alphas_cumprod)
        down = model.config.first_stage.downscale
        shape = (n, model.config.channels, h // down, w // down)
        if init is None:
            x_t, mask = initial_noise(shape, generator, device), None
        else:  # encoded while the VAE is on the accelerator
            x_t, timesteps, mask = _image_start(model, init, sampler, params.steps, timesteps, alphas_cumprod,
                                                generator, shape)
        model.low_vram_shift(is_diffusing=True)
        model_fn = guided_model_fn(ControlledDenoiser(model, units, mode, timesteps), cond, uncond, params.scale)
        latents = sampler.sample(model_fn, x_t, timesteps, alphas_cumprod, params.eta, generator, callback, mask=mask)
        model.low_vram_shift(is_diffusing=False)
        if latents.device.type == "cpu":
            release_free_memory()  # the decode is the run's memory peak (see cldm.allocator)
        decoded = (decoder.decode(latents) if decoder is not None else model.decode_first_stage(latents.to(dtype))).float()
    pixels = (decoded.permute(0, 2, 3, 1) * 127.5 + 127.5).cpu().numpy()
    if isinstance(init, Inpaint):  # pasted before clipping, as the original
        return GenerationResult(images=list(composite(pixels, init.image, init.mask)), seed=seed)
    return GenerationResult(images=list(pixels.clip(0, 255).astype(np.uint8)), seed=seed)


def _image_start(model: nn.Module, init: Img2Img | Inpaint, sampler: Sampler, steps: int, timesteps: Tensor,
                 alphas_cumprod: Tensor, generator: torch.Generator, shape: tuple[int, ...]
                 ) -> tuple[Tensor, Tensor, Optional[LatentMask]]:
    """(x to start `sampler.sample` from, the timesteps it visits, the inpaint mask or None)."""
    device = model.device
    z0 = encode_image(model, init.image, shape[0], generator).to(device)
    if isinstance(init, Img2Img):
        begin = sampler.img2img(steps, float(init.denoise), timesteps, alphas_cumprod)
        noise = initial_noise(shape, generator, device)
        return sampler.start(z0, noise, begin, alphas_cumprod), begin.timesteps, None
    keep = torch.from_numpy(latent_keep_mask(init.mask, model.config.first_stage.downscale))[None, None].to(device)
    return initial_noise(shape, generator, device), timesteps, LatentMask(z0, keep)


def _check_init(init: Img2Img | Inpaint | None, size: tuple[int, int], sampler: Optional[Sampler] = None) -> None:
    if init is None:
        return
    if not isinstance(init, (Img2Img, Inpaint)):
        raise GenerationInputError(f"init must be an Img2Img or an Inpaint, got {type(init).__name__}")
    check_control_map(init.image, "init image")
    if init.image.shape[:2] != tuple(size):
        raise GenerationInputError(f"init image is {init.image.shape[0]}×{init.image.shape[1]}, the control map "
                                   f"{size[0]}×{size[1]}: they must have the same size")
    if isinstance(init, Img2Img):
        d = init.denoise
        if isinstance(d, bool) or not isinstance(d, (int, float, np.integer, np.floating)) or not 0.0 < d <= 1.0:
            raise GenerationInputError(f"denoise must be a number in (0, 1], got {d!r}")
        if sampler is not None and sampler.img2img is None:
            raise GenerationInputError(f"the {sampler.label} sampler cannot start from an image (img2img); "
                                       "choose another sampler")
        return
    m = init.mask
    if not isinstance(m, np.ndarray) or m.ndim != 2 or m.shape != tuple(size) or not np.issubdtype(m.dtype, np.floating):
        raise GenerationInputError(f"inpaint mask must be an H×W float array of the image's size {size[0]}×{size[1]}, "
                                   f"got {type(m).__name__} {getattr(m, 'shape', None)} {getattr(m, 'dtype', '')}")
    if not np.isfinite(m).all() or m.min() < 0.0 or m.max() > 1.0:
        raise GenerationInputError("inpaint mask values must be in [0, 1]")


def _check_units(units: list[ControlUnit]) -> None:
    if not units:
        raise GenerationInputError("at least one control unit is needed")
    for k, unit in enumerate(units):
        check_control_map(unit.control_map, f"control map {k + 1}")
        m = unit.hint_mask
        if m is not None and (not isinstance(m, np.ndarray) or m.dtype != np.bool_ or m.shape != unit.control_map.shape[:2]):
            raise GenerationInputError(f"hint mask {k + 1} must be an H×W bool array of its control map's size")
        _check_range(f"strength of control {k + 1}", unit.strength, limits.STRENGTH)
        if not 0.0 <= unit.start < unit.end <= 1.0:
            raise GenerationInputError(f"control {k + 1}: need 0 <= start < end <= 1, got start {unit.start}, end {unit.end}")
    if len({u.control_map.shape for u in units}) > 1:
        raise GenerationInputError(f"control maps differ in size: {[u.control_map.shape[:2] for u in units]}")


def hint_tensor(control_map: np.ndarray, n: int, device: torch.device, dtype: torch.dtype,
                mask: Optional[np.ndarray] = None) -> Tensor:
    """The ControlNet's input: the H×W×3 uint8 map as an N×3×H×W tensor in [0, 1], repeated per sample; −1 in
    every channel where the H×W bool `mask` is True."""
    hint = torch.from_numpy(control_map.copy()).to(device=device, dtype=torch.float32) / 255.0
    if mask is not None:
        hint[torch.from_numpy(mask).to(device)] = -1.0
    return hint.permute(2, 0, 1).unsqueeze(0).repeat(n, 1, 1, 1).to(dtype)
