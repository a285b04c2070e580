"""Few-step samplers for ε-prediction models, one plain function per algorithm, registered in `SAMPLERS`.

Each sampler reproduces, step for step, the diffusers scheduler a user gets from the SD 1.5 scheduler config with
default options (scaled_linear β 0.00085…0.012, 1000 training steps, steps_offset 1, set_alpha_to_one False):
its timestep spacing, its initial-noise scale, its lower-order first/last steps and its noise draws.

Shared conventions (those of `cldm.ddim.sample_ddim`):

* `sample_X(model_fn, x, timesteps, alphas_cumprod, eta=0.0, generator=None, callback=None, *, mask=None)
  -> Tensor`.
* `x` is unit Gaussian noise as drawn by `cldm.ddim.initial_noise`; the Euler samplers scale it by their largest σ.
* `model_fn(x_in, t) -> ε`: `x_in` is the variance-preserving latent √ᾱ·x0 + √(1−ᾱ)·ε the UNet was trained on,
  float32; `t` has shape (N,) and holds one entry of `timesteps`, same value and dtype (float32 for the Euler
  samplers, whose timesteps are fractional; int64 otherwise).
* `timesteps` ascending, visited in descending order, one model call per timestep; each sampler has its own
  schedule function (`*_timesteps(steps, alphas_cumprod)`) that makes them from the step count.
* `callback(i, total, x, x0)` after step i: `x` is the latent after the step in the variance-preserving space of
  the next timestep (after the last step: the final latent), `x0` the clean latent predicted at step i.
  Returning False raises `SamplingCancelled(i + 1, total)`.
* Noise is drawn in float32 on the CPU from `generator`, one N(0, I) tensor of x's shape in each step where the
  diffusers scheduler draws one, then moved to x's device. A CPU generator's float16/bfloat16 draws are its float32
  draws rounded, so the noise is diffusers' also when diffusers draws it in the model's half dtype.
* `eta` is DDIM's σ scale; the other algorithms have no such parameter and ignore it (Euler a always adds its full
  ancestral noise, as in diffusers).
* The update runs in float32 with float64 coefficients, whatever the model's dtype.
* `mask` (inpainting, `cldm.img2img.LatentMask`): before each model call the latent is blended with the image
  latent noised to the level the latent is at (ᾱ = 1/(1+σ²); the Euler samplers convert their x to the VP space
  and back); one draw from `generator` per step, before the step's own noise.
* Img2img (`Sampler.img2img`, `Sampler.start`): the sampler visits only the low-noise end of its schedule and
  starts from the image latent noised to the level of the first visited timestep (the diffusers img2img
  convention); DDIM keeps the original's off-by-one instead (`ddim_img2img`).

Noise levels: σ = √((1−ᾱ)/ᾱ) (the "variance-exploding" σ of Karras et al. 2022); the VP latent is x/√(1+σ²),
its signal and noise scales α = 1/√(1+σ²) and α·σ; the DPM-Solver/UniPC half log-SNR is λ = −log σ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from cldm.ddim import ModelFn, SamplingCancelled, StepCallback, make_ddim_timesteps, sample_ddim
from cldm.img2img import LatentMask

# (steps, ᾱ) -> ascending timesteps.
Schedule = Callable[[int, Tensor], Tensor]
SampleFn = Callable[..., Tensor]


@dataclass(frozen=True)
class Img2ImgStart:
    """Where img2img sampling starts: the (ascending) timesteps `sample` visits, and the noise level ᾱ the image
    latent is noised to."""

    timesteps: Tensor
    alpha_bar: float


# (steps, denoise in (0, 1], the schedule's timesteps, ᾱ) -> the start.
Img2ImgRule = Callable[[int, float, Tensor, Tensor], Img2ImgStart]

KARRAS_RHO = 7.0
LCM_ORIGINAL_STEPS = 50
LCM_TIMESTEP_SCALING = 10.0
LCM_SIGMA_DATA = 0.5


@dataclass(frozen=True)
class Sampler:
    """One registered sampler: `schedule(steps, ᾱ)` gives the ascending timesteps `sample` is called with.

    `stochastic`: draws noise from the generator whatever eta (DDIM draws only when eta > 0).
    `img2img`: where the sampler starts from an image (None: it cannot). `sigma_space`: the sampler keeps x as
    x0 + σ·ε and scales the unit noise it is given by its largest σ (the Euler samplers)."""

    name: str
    label: str
    schedule: Schedule
    sample: SampleFn
    stochastic: bool
    img2img: Optional[Img2ImgRule] = None
    sigma_space: bool = False

    def start(self, z0: Tensor, noise: Tensor, begin: Img2ImgStart, alphas_cumprod: Tensor) -> Tensor:
        """The `x` to give `sample` (with `begin.timesteps`) so that it starts from the image latent `z0` noised
        with `noise` to `begin.alpha_bar`: √ᾱ·z0 + √(1−ᾱ)·noise, or for a σ-space sampler z0 + σ·noise divided by
        the σ it scales its input by."""
        a = begin.alpha_bar
        if not self.sigma_space:
            return math.sqrt(a) * z0.float() + math.sqrt(1.0 - a) * noise
        scale = float(_table_sigmas(begin.timesteps, alphas_cumprod).max())
        return (z0.float() + math.sqrt((1.0 - a) / a) * noise) / scale


# --- schedules ----------------------------------------------------------------------------------------------------


def _f64(alphas_cumprod: Tensor) -> Tensor:
    return alphas_cumprod.detach().to("cpu", torch.float64)


def _check_steps(steps: int, high: int) -> None:
    if not 1 <= steps <= high:
        raise ValueError(f"steps must be in 1..{high}, got {steps}")


def noise_levels(alphas_cumprod: Tensor) -> Tensor:
    """σ_t = √((1−ᾱ_t)/ᾱ_t) for every training timestep, float64, increasing with t."""
    ac = _f64(alphas_cumprod)
    return ((1 - ac) / ac).sqrt()


def _linspace(start: float, stop: float, num: int) -> Tensor:
    """Evenly spaced float64 points as numpy computes them: start + k·((stop − start)/(num − 1)), the last = stop.

    Rounding a point that lies on a half (n = 26: 999·13/26 = 499.5) depends on this exact arithmetic."""
    if num == 1:
        return torch.tensor([float(start)], dtype=torch.float64)
    points = torch.arange(num, dtype=torch.float64) * ((stop - start) / (num - 1)) + start
    points[-1] = stop
    return points


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, xp increasing, clamped to the ends (numpy's interp)."""
    x = x.to(torch.float64).clamp(xp[0], xp[-1])
    hi = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    lo = hi - 1
    w = (x - xp[lo]) / (xp[hi] - xp[lo])
    return fp[lo] + w * (fp[hi] - fp[lo])


def ddim_timesteps(steps: int, alphas_cumprod: Tensor) -> Tensor:
    """The original ControlNet's DDIM timesteps (`cldm.ddim.make_ddim_timesteps`), int64."""
    return make_ddim_timesteps(steps, len(alphas_cumprod))


def linspace_timesteps(steps: int, alphas_cumprod: Tensor) -> Tensor:
    """`steps` evenly spaced fractional timesteps from 0 to T−1, float32 (diffusers' "linspace" spacing).

    One step gives [0]: the single step then runs at the smallest noise level, as in diffusers."""
    T = len(alphas_cumprod)
    _check_steps(steps, T)
    return _linspace(0, T - 1, steps).to(torch.float32)


def rounded_linspace_timesteps(steps: int, alphas_cumprod: Tensor) -> Tensor:
    """The first `steps` of `steps + 1` evenly spaced points from T−1 to 0, rounded (half to even), int64.

    The multistep solvers' "linspace" spacing: 10 steps → 999, 899, …, 100; t = 0 is never evaluated."""
    T = len(alphas_cumprod)
    _check_steps(steps, T)
    return _linspace(0, T - 1, steps + 1).round()[1:].to(torch.int64)


def _float32_noise_levels(alphas_cumprod: Tensor) -> Tensor:
    """σ_t and log σ_t computed in float32 from ᾱ in float32, widened to float64.

    The Karras schedule is built from these so that its rounded timesteps are diffusers' (which keeps its tables
    in float32): a t that falls within ~1e-3 of a half rounds by the float32 table (n = 18 steps: t = 575.4998 in
    float64, 575.5005 in float32, diffusers evaluates 576)."""
    ac = alphas_cumprod.detach().to("cpu", torch.float32)
    sigmas = ((1 - ac) / ac).sqrt()
    return sigmas.double(), sigmas.log().double()


def karras_noise_levels(steps: int, alphas_cumprod: Tensor) -> Tensor:
    """Karras et al. 2022 ("Elucidating the Design Space…", eq. 5) σ, descending from σ_max to σ_min, ρ = 7.

    σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, σ_min/σ_max the schedule's σ at t = 0 and T−1
    (from the float32 table, see `_float32_noise_levels`)."""
    _check_steps(steps, len(alphas_cumprod))
    sigmas, _ = _float32_noise_levels(alphas_cumprod)
    ramp = _linspace(0, 1, steps)
    hi, lo = float(sigmas[-1]) ** (1 / KARRAS_RHO), float(sigmas[0]) ** (1 / KARRAS_RHO)
    return (hi + ramp * (lo - hi)) ** KARRAS_RHO


def karras_timesteps(steps: int, alphas_cumprod: Tensor) -> Tensor:
    """The timesteps of the Karras σ: t interpolated linearly in log σ, then rounded, int64, ascending.

    The model sees these rounded t while the solver uses the exact Karras σ. At high step counts (and rarely
    otherwise) two σ near σ_min can round to the same t, so entries may repeat."""
    _, log_sigmas = _float32_noise_levels(alphas_cumprod)
    grid = torch.arange(len(log_sigmas), dtype=torch.float64)
    t = _interp(karras_noise_levels(steps, alphas_cumprod).log(), log_sigmas, grid)
    return t.round().to(torch.int64).flip(0)


def lcm_timesteps(steps: int, alphas_cumprod: Tensor) -> Tensor:
    """Latent Consistency Model timesteps (Luo et al. 2023), int64, ascending.

    The distillation grid is k·j − 1 for j = 1…50 with k = T // 50 (19, 39, …, 999); `steps` of its entries are
    taken from the top at evenly spaced (floored) positions: 4 steps → 999, 759, 499, 259. At most 50 steps."""
    T = len(alphas_cumprod)
    _check_steps(steps, LCM_ORIGINAL_STEPS)
    k = T // LCM_ORIGINAL_STEPS
    grid = torch.arange(LCM_ORIGINAL_STEPS, 0, -1, dtype=torch.int64) * k - 1
    positions = (torch.arange(steps, dtype=torch.float64) * (LCM_ORIGINAL_STEPS / steps)).floor().to(torch.int64)
    return grid[positions].flip(0)


# --- img2img starts -----------------------------------------------------------------------------------------------


def _check_denoise(denoise: float) -> None:
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")


def ddim_img2img(steps: int, denoise: float, timesteps: Tensor, alphas_cumprod: Tensor) -> Img2ImgStart:
    """The original's DDIM img2img: t_enc = min(int(denoise·steps), steps − 1); the latent is noised to the
    timestep of index t_enc, then the steps of indices t_enc − 1 … 0 run.

    The off-by-one is the original's (inherited from the SD img2img script) and kept for its results: the latent
    is noised one index higher than denoising starts from. Tile defaults, 32 steps (33 timesteps 1, 32, …, 993)
    at denoise 1: noised to t = 962, denoised from 931 down to 1 in 31 steps. t_enc = 0 (one step, or
    denoise < 1/steps) runs no step at all: the output is the image latent slightly noised (to t = 1)."""
    _check_denoise(denoise)
    t_enc = min(int(denoise * steps), steps - 1)
    return Img2ImgStart(timesteps[:t_enc], float(_f64(alphas_cumprod)[int(timesteps[t_enc])]))


def tail_img2img(steps: int, denoise: float, timesteps: Tensor, alphas_cumprod: Tensor) -> Img2ImgStart:
    """The diffusers img2img convention: visit the last k = max(1, int(denoise·n)) of the n timesteps (in visiting
    order, i.e. the k lowest) and noise the image latent to the level of the first visited one."""
    _check_denoise(denoise)
    k = max(1, int(denoise * len(timesteps)))
    visited = timesteps[:k]
    sigma = float(_table_sigmas(visited, alphas_cumprod)[0])
    return Img2ImgStart(visited, 1.0 / (1.0 + sigma * sigma))


# --- shared step helpers ------------------------------------------------------------------------------------------


def _t(timestep: Tensor, x: Tensor) -> Tensor:
    return timestep.reshape(1).repeat(x.shape[0]).to(x.device)


def _noise(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)


def _vp_blend(mask: Optional[LatentMask], x: Tensor, sigma: float, generator: Optional[torch.Generator]) -> Tensor:
    """`mask.blend` for a VP latent at noise level σ (ᾱ = 1/(1+σ²)); x unchanged without a mask."""
    return x if mask is None else mask.blend(x, 1.0 / (1.0 + sigma * sigma), generator)


def _sigma_blend(mask: Optional[LatentMask], x: Tensor, sigma: float, generator: Optional[torch.Generator]) -> Tensor:
    """`mask.blend` for a σ-space latent x = x0 + σ·ε (through the VP latent x/√(1+σ²))."""
    if mask is None:
        return x
    scale = math.sqrt(1 + sigma * sigma)
    return mask.blend(x / scale, 1.0 / (1.0 + sigma * sigma), generator) * scale


def _report(callback: Optional[StepCallback], i: int, total: int, x: Tensor, x0: Tensor) -> None:
    if callback is not None and callback(i, total, x, x0) is False:
        raise SamplingCancelled(i + 1, total)


def _table_sigmas(timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """σ at each timestep (linear in t between training timesteps), descending, with a final 0 appended."""
    sigmas = noise_levels(alphas_cumprod)
    desc = timesteps.flip(0).cpu()
    if desc.is_floating_point():
        at = _interp(desc, torch.arange(len(sigmas), dtype=torch.float64), sigmas)
    else:
        at = sigmas[desc]
    return torch.cat([at, torch.zeros(1, dtype=torch.float64)])


# --- Euler --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_euler(model_fn: ModelFn, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, eta: float = 0.0,
                 generator: Optional[torch.Generator] = None, callback: Optional[StepCallback] = None, *,
                 mask: Optional[LatentMask] = None) -> Tensor:
    """Euler's method on the probability-flow ODE dx/dσ = ε (Karras et al. 2022, Algorithm 1 without churn).

    In σ-space x = x0 + σ·ε: x_T = σ_max·z (σ_max, not √(1+σ_max²), as diffusers' "linspace" init_noise_sigma);
    the model sees x/√(1+σ²); x ← x + ε·(σ_next − σ), σ_next = 0 after the last step. Deterministic."""
    sigmas = _table_sigmas(timesteps, alphas_cumprod)
    desc = timesteps.flip(0)
    x = x.float() * float(sigmas.max())
    total = len(desc)
    for i in range(total):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x = _sigma_blend(mask, x, s, generator)
        eps = model_fn(x / math.sqrt(1 + s * s), _t(desc[i], x)).float()
        x0 = x - s * eps
        x = x + (s_next - s) * eps
        _report(callback, i, total, x / math.sqrt(1 + s_next * s_next), x0)
    return x


@torch.no_grad()
def sample_euler_ancestral(model_fn: ModelFn, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor,
                           eta: float = 0.0, generator: Optional[torch.Generator] = None,
                           callback: Optional[StepCallback] = None, *, mask: Optional[LatentMask] = None) -> Tensor:
    """Euler ancestral ("Euler a", k-diffusion's `sample_euler_ancestral` with eta = 1).

    Each step splits σ_next into a deterministic part σ_down and fresh noise σ_up with σ_down² + σ_up² = σ_next²,
    σ_up = √(σ_next²·(σ² − σ_next²)/σ²): x ← x + ε·(σ_down − σ) + σ_up·z. One z per step, the last step's
    (where σ_up = 0) included, as diffusers draws it. Same x_T scale and model input as `sample_euler`."""
    sigmas = _table_sigmas(timesteps, alphas_cumprod)
    desc = timesteps.flip(0)
    x = x.float() * float(sigmas.max())
    total = len(desc)
    for i in range(total):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x = _sigma_blend(mask, x, s, generator)
        eps = model_fn(x / math.sqrt(1 + s * s), _t(desc[i], x)).float()
        x0 = x - s * eps
        s_up = math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)
        s_down = math.sqrt(s_next**2 - s_up**2)
        x = x + (s_down - s) * eps + s_up * _noise(x, generator)
        _report(callback, i, total, x / math.sqrt(1 + s_next * s_next), x0)
    return x


# --- DPM-Solver++(2M) ---------------------------------------------------------------------------------------------


def _dpmpp_2m(model_fn: ModelFn, x: Tensor, desc: Tensor, sigmas: Tensor, callback: Optional[StepCallback],
              mask: Optional[LatentMask], generator: Optional[torch.Generator]) -> Tensor:
    """DPM-Solver++(2M) over descending timesteps `desc` at noise levels `sigmas` (one more: the final 0)."""
    x = x.float()
    total = len(desc)
    x0_prev: Optional[Tensor] = None
    for i in range(total):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        a, a_next = 1 / math.sqrt(1 + s * s), 1 / math.sqrt(1 + s_next * s_next)
        x = _vp_blend(mask, x, s, generator)
        eps = model_fn(x, _t(desc[i], x)).float()
        x0 = (x - a * s * eps) / a
        if s_next == 0:
            # λ_next = ∞: the first-order update reduces to x0 (diffusers' final step is always first order).
            x = x0
        else:
            h = math.log(s / s_next)
            d = x0
            if x0_prev is not None:
                r = math.log(float(sigmas[i - 1]) / s) / h
                d = x0 + (x0 - x0_prev) / (2 * r)
            x = (s_next * a_next) / (s * a) * x - a_next * math.expm1(-h) * d
        x0_prev = x0
        _report(callback, i, total, x, x0)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model_fn: ModelFn, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, eta: float = 0.0,
                    generator: Optional[torch.Generator] = None, callback: Optional[StepCallback] = None, *,
                    mask: Optional[LatentMask] = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), multistep second order in λ = −log σ.

    With h = λ_next − λ, r = h_prev/h: D = x0 + (x0 − x0_prev)/(2r) (D = x0 at the first step), x ← (α_next·σ_next)
    /(α·σ)·x + α_next·(1 − e^(−h))·D in the VP space; the last step (to σ = 0) returns x0. Deterministic."""
    return _dpmpp_2m(model_fn, x, timesteps.flip(0), _table_sigmas(timesteps, alphas_cumprod), callback, mask, generator)


@torch.no_grad()
def sample_dpmpp_2m_karras(model_fn: ModelFn, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor,
                           eta: float = 0.0, generator: Optional[torch.Generator] = None,
                           callback: Optional[StepCallback] = None, *, mask: Optional[LatentMask] = None) -> Tensor:
    """DPM-Solver++(2M) on the Karras σ schedule (`karras_noise_levels`).

    The solver steps between the exact Karras σ while the model sees their rounded timesteps, so `timesteps` must
    be `karras_timesteps(len(timesteps), alphas_cumprod)` (ValueError otherwise): the σ are rebuilt from the count."""
    steps = len(timesteps)
    if not torch.equal(timesteps.cpu(), karras_timesteps(steps, alphas_cumprod)):
        raise ValueError("timesteps must be karras_timesteps(len(timesteps), alphas_cumprod)")
    sigmas = torch.cat([karras_noise_levels(steps, alphas_cumprod), torch.zeros(1, dtype=torch.float64)])
    return _dpmpp_2m(model_fn, x, timesteps.flip(0), sigmas, callback, mask, generator)


# --- UniPC --------------------------------------------------------------------------------------------------------


def _unipc_update(x: Tensor, s: float, s_next: float, history: list[tuple[float, Tensor]], order: int,
                  x0_next: Optional[Tensor] = None) -> Tensor:
    """One UniP step (x0_next None) or UniC step of the B(h) = e^(−h) − 1 ("bh2") variant with the x0 model.

    From x at σ = s to σ = s_next. `history` holds (σ, predicted x0) of the last evaluations, the one at s last;
    order 2 also uses the one before. The corrector gets the x0 predicted at s_next as well."""
    a, a_next = 1 / math.sqrt(1 + s * s), 1 / math.sqrt(1 + s_next * s_next)
    h = math.log(s / s_next)  # λ_next − λ
    e = math.expm1(-h)  # hφ_1(−h), which is also B(h) in the bh2 variant
    m0 = history[-1][1]
    out = (s_next * a_next) / (s * a) * x - a_next * e * m0
    if order == 2:
        s_prev, x0_prev = history[-2]
        r1 = math.log(s / s_prev) / h  # (λ_prev − λ)/h
        d1 = (x0_prev - m0) / r1
    if x0_next is None:  # UniP-2 uses ρ = 1/2
        return out if order == 1 else out - a_next * e * 0.5 * d1
    if order == 1:  # UniC-1 uses ρ = 1/2
        return out - a_next * e * 0.5 * (x0_next - m0)
    # ρ solves Σ_k ρ_k·r_k^(j−1) = b_j (j = 1, 2) for r = (r1, 1), b_j = j!·(−h)·φ_(j+1)(−h)/B(h),
    # φ_1(z) = (e^z − 1)/z, φ_(k+1)(z) = (φ_k(z) − 1/k!)/z.
    hphi_2 = e / -h - 1
    hphi_3 = hphi_2 / -h - 0.5
    b1, b2 = hphi_2 / e, 2 * hphi_3 / e
    rho0 = (b1 - b2) / (1 - r1)
    rho1 = b1 - rho0
    return out - a_next * e * (rho0 * d1 + rho1 * (x0_next - m0))


@torch.no_grad()
def sample_unipc(model_fn: ModelFn, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, eta: float = 0.0,
                 generator: Optional[torch.Generator] = None, callback: Optional[StepCallback] = None, *,
                 mask: Optional[LatentMask] = None) -> Tensor:
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), UniP-2 + UniC, bh2, x0 model.

    Each step evaluates the model on the predictor's output, first corrects that output with the new evaluation
    (UniC, no extra model call; from the second step on) and then predicts the next latent (UniP). Orders: 1 at the
    first and last step, 2 between; the corrector uses the previous predictor's order; the last step (to σ = 0)
    returns the x0 predicted at the last timestep. The callback's x0 is that of the uncorrected latent, the one the
    model saw. Deterministic."""
    sigmas = _table_sigmas(timesteps, alphas_cumprod)
    desc = timesteps.flip(0)
    x = x.float()
    total = len(desc)
    history: list[tuple[float, Tensor]] = []
    x_before: Optional[Tensor] = None
    prev_order = 0
    for i in range(total):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        a = 1 / math.sqrt(1 + s * s)
        x = _vp_blend(mask, x, s, generator)
        eps = model_fn(x, _t(desc[i], x)).float()
        x0 = (x - a * s * eps) / a
        if x_before is not None:
            x = _unipc_update(x_before, float(sigmas[i - 1]), s, history, prev_order, x0_next=x0)
        history = (history + [(s, x0)])[-2:]
        order = min(2, total - i, i + 1)
        x_before = x
        # The last step is first order; to σ = 0 (λ = ∞) it returns x0.
        x = x0 if s_next == 0 else _unipc_update(x, s, s_next, history, order)
        prev_order = order
        _report(callback, i, total, x, x0)
    return x


# --- LCM ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_lcm(model_fn: ModelFn, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, eta: float = 0.0,
               generator: Optional[torch.Generator] = None, callback: Optional[StepCallback] = None, *,
               mask: Optional[LatentMask] = None) -> Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023, Algorithm 3; Song et al. 2023 §3 boundary).

    At t: x0̂ = (x − √(1−ᾱ_t)·ε)/√ᾱ_t, the consistency output f = c_out·x0̂ + c_skip·x with c_skip = σ_d²/(τ² + σ_d²),
    c_out = τ/√(τ² + σ_d²), τ = 10·t, σ_d = 0.5; then re-noise to the next timestep, x ← √ᾱ_next·f + √(1−ᾱ_next)·z,
    except after the last step, which returns f (one z per step but the last). The callback's x0 is f."""
    ac = _f64(alphas_cumprod)
    desc = timesteps.flip(0)
    x = x.float()
    total = len(desc)
    for i in range(total):
        t = int(desc[i])
        a = float(ac[t])
        if mask is not None:
            x = mask.blend(x, a, generator)
        eps = model_fn(x, _t(desc[i], x)).float()
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        tau = LCM_TIMESTEP_SCALING * t
        c_skip = LCM_SIGMA_DATA**2 / (tau**2 + LCM_SIGMA_DATA**2)
        c_out = tau / math.sqrt(tau**2 + LCM_SIGMA_DATA**2)
        f = c_out * x0 + c_skip * x
        if i < total - 1:
            a_next = float(ac[int(desc[i + 1])])
            x = math.sqrt(a_next) * f + math.sqrt(1 - a_next) * _noise(x, generator)
        else:
            x = f
        _report(callback, i, total, x, f)
    return x


# --- registry -----------------------------------------------------------------------------------------------------

SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("ddim", "DDIM", ddim_timesteps, sample_ddim, stochastic=False, img2img=ddim_img2img),
        Sampler("euler", "Euler", linspace_timesteps, sample_euler, stochastic=False, img2img=tail_img2img,
                sigma_space=True),
        Sampler("euler_a", "Euler a", linspace_timesteps, sample_euler_ancestral, stochastic=True,
                img2img=tail_img2img, sigma_space=True),
        Sampler("dpmpp_2m", "DPM++ 2M", rounded_linspace_timesteps, sample_dpmpp_2m, stochastic=False,
                img2img=tail_img2img),
        # Its σ are rebuilt from the step count (see sample_dpmpp_2m_karras), so it cannot run part of its schedule.
        Sampler("dpmpp_2m_karras", "DPM++ 2M Karras", karras_timesteps, sample_dpmpp_2m_karras, stochastic=False),
        Sampler("unipc", "UniPC", rounded_linspace_timesteps, sample_unipc, stochastic=False, img2img=tail_img2img),
        Sampler("lcm", "LCM", lcm_timesteps, sample_lcm, stochastic=True, img2img=tail_img2img),
    )
}
