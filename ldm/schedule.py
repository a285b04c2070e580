"""DDPM "linear" beta schedule and the derived buffers of the original LatentDiffusion (float64 maths)."""
from __future__ import annotations

import torch

# Order of the top-level buffers in the official state dict (logvar comes last).
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar",
)


def linear_betas(linear_start: float, linear_end: float, timesteps: int) -> torch.Tensor:
    """Squares of a linspace between sqrt(start) and sqrt(end), float64."""
    if timesteps < 1 or not 0 < linear_start <= linear_end < 1:
        raise ValueError(f"invalid schedule: start={linear_start}, end={linear_end}, timesteps={timesteps}")
    return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2


def schedule_buffers(betas: torch.Tensor, logvar_init: float = 0.0) -> dict[str, torch.Tensor]:
    """All 13 buffers (float64, in checkpoint order) from float64 betas; v_posterior = 0."""
    betas = betas.to(torch.float64)
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64, device=betas.device), ac[:-1]])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    buffers = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
        "logvar": torch.full_like(betas, logvar_init),
    }
    return buffers


def linear_schedule(linear_start: float, linear_end: float, timesteps: int) -> dict[str, torch.Tensor]:
    return schedule_buffers(linear_betas(linear_start, linear_end, timesteps))
