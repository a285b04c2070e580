"""ControlledUnetModel and ControlLDM (inference-side LatentDiffusion with a ControlNet)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from cldm.controlnet import ControlNet
from ldm.clip import FrozenCLIPEmbedder
from ldm.schedule import linear_schedule
from ldm.unet import UNetModel
from ldm.vae import AutoencoderKL, DiagonalGaussianDistribution

if TYPE_CHECKING:
    from cldm.config import ControlLDMConfig, UNetConfig


def scale_residuals(residuals: Sequence[torch.Tensor], scales: Sequence[float]) -> list[torch.Tensor]:
    if len(residuals) != len(scales):
        raise ValueError(f"{len(scales)} control scales for {len(residuals)} ControlNet outputs")
    return [r * s for r, s in zip(residuals, scales)]


def sum_residuals(*residual_lists: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Element-wise sum of several ControlNets' (already scaled) residual lists, for multi-condition control."""
    if not residual_lists or len({len(r) for r in residual_lists}) != 1:
        raise ValueError("need one or more residual lists of equal length")
    return [torch.stack(parts).sum(0) if len(parts) > 1 else parts[0] for parts in zip(*residual_lists)]


class ControlledUnetModel(UNetModel):
    """SD UNet whose locked encoder runs without gradients; ControlNet residuals are added on the way up."""

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                control: Sequence[torch.Tensor] | None = None, only_mid_control: bool = False) -> torch.Tensor:
        with torch.no_grad():
            h, skips, emb = self.encode(x, timesteps, context)
        if control is not None:
            if len(control) != len(skips) + 1:
                raise ValueError(f"expected {len(skips) + 1} control residuals, got {len(control)}")
            h = h + control[-1]
            if not only_mid_control:
                skips = [s + c for s, c in zip(skips, control[:-1])]
        return self.decode(h, skips, emb, context)


class DiffusionWrapper(nn.Module):
    """Holds `diffusion_model`, the level the official key names carry (`model.diffusion_model.*`)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.diffusion_model = ControlledUnetModel(cfg)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                control: Sequence[torch.Tensor] | None = None, only_mid_control: bool = False) -> torch.Tensor:
        return self.diffusion_model(x, timesteps, context, control, only_mid_control)


class ControlLDM(nn.Module):
    def __init__(self, cfg: ControlLDMConfig):
        super().__init__()
        self.config = cfg
        for name, value in linear_schedule(cfg.linear_start, cfg.linear_end, cfg.timesteps).items():
            self.register_buffer(name, value.to(torch.float32))
        self.model = DiffusionWrapper(cfg.unet)
        self.first_stage_model = AutoencoderKL(cfg.first_stage).eval().requires_grad_(False)
        self.cond_stage_model = FrozenCLIPEmbedder(cfg.cond_stage).eval()
        self.control_model = ControlNet(cfg.control)
        self.num_timesteps = cfg.timesteps
        self.scale_factor = cfg.scale_factor
        self.only_mid_control = cfg.only_mid_control
        self.control_scales = [1.0] * cfg.control.num_outputs
        # save_memory of the original: only the working modules sit on the accelerator (see low_vram_shift).
        self.low_memory = False

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.diffusion_model.time_embed[0].weight.dtype

    def _timesteps(self, t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"timesteps must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        return t

    def control_residuals(self, x_noisy: torch.Tensor, hint: torch.Tensor, t: torch.Tensor | int,
                          context: torch.Tensor, control_model: ControlNet | None = None) -> list[torch.Tensor]:
        """A ControlNet's residuals for this step, unscaled (one per input block + middle).

        `control_model` defaults to this model's own; pass another unit's ControlNet to compose several:
        residuals = sum_residuals(*(scale_residuals(model.control_residuals(x, hint_i, t, c, net_i), scales_i) ...))
        eps = model.model(x, t, c, residuals, only_mid_control)
        """
        t = self._timesteps(t, x_noisy.shape[0], x_noisy.device)
        return (control_model or self.control_model)(x_noisy, hint, t, context)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor | int, cond: dict) -> torch.Tensor:
        """eps prediction; cond = {"c_concat": [hint, ...] or None, "c_crossattn": [context, ...]}."""
        if not isinstance(cond, dict) or not cond.get("c_crossattn"):
            raise ValueError("cond must be a dict with a non-empty 'c_crossattn' list")
        unknown = set(cond) - {"c_concat", "c_crossattn"}
        if unknown:
            raise ValueError(f"unknown conditioning keys {sorted(unknown)}")
        context = torch.cat(list(cond["c_crossattn"]), dim=1)
        t = self._timesteps(t, x_noisy.shape[0], x_noisy.device)
        control = None
        if cond.get("c_concat") is not None:
            hint = torch.cat(list(cond["c_concat"]), dim=1)
            control = scale_residuals(self.control_residuals(x_noisy, hint, t, context), self.control_scales)
        return self.model(x_noisy, t, context, control, self.only_mid_control)

    def get_learned_conditioning(self, prompts: list[str]) -> torch.Tensor:
        return self.cond_stage_model(prompts)

    def get_unconditional_conditioning(self, n: int) -> torch.Tensor:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        return self.get_learned_conditioning([""] * n)

    def encode_first_stage(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, posterior: DiagonalGaussianDistribution | torch.Tensor,
                                 generator: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(posterior, DiagonalGaussianDistribution):
            return self.scale_factor * posterior.sample(generator)
        if isinstance(posterior, torch.Tensor):
            return self.scale_factor * posterior
        raise TypeError(f"expected a posterior or a tensor, got {type(posterior).__name__}")

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage_model.decode((1.0 / self.scale_factor) * z)

    def low_vram_shift(self, is_diffusing: bool) -> None:
        """In low-memory mode keep only UNet+ControlNet (diffusing) or VAE+CLIP (otherwise) on the accelerator.
        The accelerator is where the model (its schedule buffers) was moved; on CPU this does nothing."""
        if not self.low_memory or self.device.type == "cpu":
            return
        cpu = torch.device("cpu")
        diffusion, other = (self.device, cpu) if is_diffusing else (cpu, self.device)
        self.model.to(diffusion)
        self.control_model.to(diffusion)
        self.first_stage_model.to(other)
        self.cond_stage_model.to(other)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
