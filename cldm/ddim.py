"""DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models") for eps-prediction models.

The schedule, the σ formula and the last step's target ᾱ[0] follow the original ControlNet sampler
(`ldm/models/diffusion/ddim.py`), which equals diffusers' DDIMScheduler with steps_offset=1,
timestep_spacing="leading" and set_alpha_to_one=False.

Cancelling: a per-step callback `callback(i, total, x, x0_pred)` may return False; the sampler then raises
`SamplingCancelled`. Any other return value (None included) continues.

Noise (x_T and the eta noise) is drawn on the CPU from a `torch.Generator`, then moved to the model's
device, so a seed gives the same image on every device.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from cldm.img2img import LatentMask
from ldm.schedule import linear_betas

# (x, t) -> predicted noise ε, with t a LongTensor of shape (N,).
ModelFn = Callable[[Tensor, Tensor], Tensor]
# (x, t, cond) -> ε, with cond = {"c_concat": [hint] or None, "c_crossattn": [context]} (ControlLDM.apply_model).
Denoiser = Callable[[Tensor, Tensor, dict], Tensor]
# (step index from 0, total steps, x after the step, predicted x0) -> False to cancel.
StepCallback = Callable[[int, int, Tensor, Tensor], Optional[bool]]


class SamplingCancelled(Exception):
    """Raised by the sampler when the step callback returned False."""

    def __init__(self, step: int, total: int):
        super().__init__(f"sampling cancelled after step {step} of {total}")
        self.step = step
        self.total = total


def make_ddim_timesteps(S: int, num_ddpm_timesteps: int = 1000) -> Tensor:
    """The original's "uniform" DDIM timesteps, ascending: range(0, T, T // S) + 1.

    For S = 20: 1, 51, …, 951. When S does not divide T the original yields more steps than asked
    (S = 30 → 31 steps: 1, 34, …, 991; S = 7 → 8 steps); this is kept for compatibility.
    When T // S divides T − 1 (S = 3, 9, 27, 36, 37 for T = 1000) the original's last timestep is T, past the
    schedule, and it fails with an IndexError; that timestep is dropped here (S = 3 → 1, 334, 667).
    """
    if not 1 <= S <= num_ddpm_timesteps:
        raise ValueError(f"DDIM steps must be in 1..{num_ddpm_timesteps}, got {S}")
    timesteps = torch.arange(0, num_ddpm_timesteps, num_ddpm_timesteps // S, dtype=torch.long) + 1
    return timesteps[timesteps < num_ddpm_timesteps]


def ddim_coefficients(timesteps: Tensor, alphas_cumprod: Tensor, eta: float) -> tuple[Tensor, Tensor, Tensor]:
    """ᾱ_t, ᾱ_prev and σ_t (float64) for ascending `timesteps`; ᾱ_prev of the first timestep is ᾱ[0]."""
    ac = alphas_cumprod.detach().to("cpu", torch.float64)
    a_t = ac[timesteps]
    a_prev = torch.cat([ac[:1], ac[timesteps[:-1]]])
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    return a_t, a_prev, sigma


def model_alphas_cumprod(model: Any) -> Tensor:
    """ᾱ in float64 from a ControlLDM's config: its buffers may have been cast to fp16/bf16 with the model."""
    c = model.config
    return torch.cumprod(1 - linear_betas(c.linear_start, c.linear_end, c.timesteps), 0)


def initial_noise(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device | str) -> Tensor:
    """x_T ~ N(0, I) in float32, drawn on the CPU (see module docstring)."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


@torch.no_grad()
def sample_ddim(
    model_fn: ModelFn,
    x: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
    *,
    mask: Optional[LatentMask] = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) from x = x_T over ascending `timesteps`, visited in descending order.

    x0̂ = (x − √(1−ᾱ_t)·ε)/√ᾱ_t;  x ← √ᾱ_prev·x0̂ + √(1−ᾱ_prev−σ²)·ε + σ·z,
    σ = eta·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev)). The update runs in float32 whatever the model's dtype.
    `mask` (inpainting): blended in before each model call at ᾱ_t (`cldm.img2img.LatentMask`).
    """
    a_t, a_prev, sigma = ddim_coefficients(timesteps, alphas_cumprod, eta)
    x = x.float()
    total = len(timesteps)
    for i, index in enumerate(range(total - 1, -1, -1)):
        t = torch.full((x.shape[0],), int(timesteps[index]), dtype=torch.long, device=x.device)
        if mask is not None:
            x = mask.blend(x, float(a_t[index]), generator)
        eps = model_fn(x, t).float()
        at, ap, s = float(a_t[index]), float(a_prev[index]), float(sigma[index])
        x0 = (x - (1 - at) ** 0.5 * eps) / at**0.5
        x = ap**0.5 * x0 + (1 - ap - s * s) ** 0.5 * eps
        if s > 0:
            x = x + s * torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
        if callback is not None and callback(i, total, x, x0) is False:
            raise SamplingCancelled(i + 1, total)
    return x


def _same_structure(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        u, c = a[key], b[key]
        if (u is None) != (c is None):
            return False
        if u is not None and (len(u) != len(c) or any(p.shape[1:] != q.shape[1:] for p, q in zip(u, c))):
            return False
    return True


def _concat_conds(uncond: dict, cond: dict) -> dict:
    return {k: None if v is None else [torch.cat([u, c]) for u, c in zip(v, cond[k])] for k, v in uncond.items()}


def guided_model_fn(denoise: Denoiser, cond: dict, uncond: Optional[dict], scale: float) -> ModelFn:
    """Classifier-free guidance ε = ε_u + scale·(ε_c − ε_u) around `denoise`.

    When both condition dicts have the same structure (same keys, both or neither with c_concat, same tensor
    shapes) one batched call of 2N runs ([uncond, cond]); otherwise (guess mode: unconditional without
    control) two calls run, as in the original `ddim_hacked`. scale <= 1 or no uncond: the conditional branch
    only (N, not 2N: the few-step LCM settings use guidance 1, and below 1 guidance only weakens the prompt).
    """
    if uncond is None or scale <= 1.0:
        return lambda x, t: denoise(x, t, cond)
    if _same_structure(uncond, cond):
        both = _concat_conds(uncond, cond)

        def batched(x: Tensor, t: Tensor) -> Tensor:
            e_u, e_c = denoise(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
            return e_u + scale * (e_c - e_u)

        return batched

    def two_calls(x: Tensor, t: Tensor) -> Tensor:
        e_c = denoise(x, t, cond)
        e_u = denoise(x, t, uncond)
        return e_u + scale * (e_c - e_u)

    return two_calls


class DDIMSampler:
    """Compatibility wrapper with the original `DDIMSampler(model).sample(...)` call (eps models only).

    `callback` takes (i, total, x, x0_pred) like `sample_ddim` (the original's took only i).
    """

    log_every_t = 100

    def __init__(self, model: Any):
        self.model = model

    def _denoise(self, x: Tensor, t: Tensor, cond: dict) -> Tensor:
        return self.model.apply_model(x.to(self.model.dtype), t, cond)

    @torch.no_grad()
    def sample(
        self,
        S: int,
        batch_size: int,
        shape: tuple[int, int, int],
        conditioning: dict,
        verbose: bool = False,
        eta: float = 0.0,
        unconditional_guidance_scale: float = 1.0,
        unconditional_conditioning: Optional[dict] = None,
        x_T: Optional[Tensor] = None,
        callback: Optional[StepCallback] = None,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, dict[str, list[Tensor]]]:
        """Returns (samples, {"x_inter": [...], "pred_x0": [...]}) logged at the first step and every 100th index."""
        alphas_cumprod = model_alphas_cumprod(self.model)
        if x_T is None:
            x_T = initial_noise((batch_size, *shape), generator, self.model.device)
        timesteps = make_ddim_timesteps(S, len(alphas_cumprod))
        if verbose:
            print(f"Running DDIM sampling with {len(timesteps)} timesteps")
        intermediates: dict[str, list[Tensor]] = {"x_inter": [x_T], "pred_x0": [x_T]}

        def log_and_forward(i: int, total: int, x: Tensor, x0: Tensor) -> Optional[bool]:
            index = total - i - 1
            if index % self.log_every_t == 0 or index == total - 1:
                intermediates["x_inter"].append(x)
                intermediates["pred_x0"].append(x0)
            return None if callback is None else callback(i, total, x, x0)

        fn = guided_model_fn(self._denoise, conditioning, unconditional_conditioning, unconditional_guidance_scale)
        samples = sample_ddim(fn, x_T, timesteps, alphas_cumprod, eta, generator, log_and_forward)
        return samples, intermediates
