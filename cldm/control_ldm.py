"""ControlledUnetModel and ControlLDM (inference-side LatentDiffusion with a ControlNet).

The attribute names are those of the official checkpoints, so their keys load by name: `model.diffusion_model`
(the SD UNet), `control_model` (the ControlNet), `first_stage_model` (the VAE), `cond_stage_model` (CLIP text)
and 13 schedule buffers at the top level.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from cldm.control import Control, control_residuals
from cldm.controlnet import ControlNet
from ldm.clip import FrozenCLIPEmbedder
from ldm.config import UNetConfig
from ldm.schedule import linear_schedule
from ldm.unet import UNetModel
from ldm.vae import AutoencoderKL, DiagonalGaussianDistribution

if TYPE_CHECKING:
    from cldm.config import ControlLDMConfig

# Checkpoint key prefixes of the parts (from the attribute names below).
CONTROL_PREFIX = "control_model."
UNET_PREFIX = "model.diffusion_model."


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
        """A ControlNet's residuals for this step, unscaled (one per input block + middle); `control_model`
        defaults to this model's own."""
        t = self._timesteps(t, x_noisy.shape[0], x_noisy.device)
        return (control_model or self.control_model)(x_noisy, hint, t, context)

    def eps(self, x_noisy: torch.Tensor, t: torch.Tensor | int, context: torch.Tensor,
            controls: Sequence[Control] = ()) -> torch.Tensor:
        """The noise prediction of the SD UNet steered by `controls` (none: plain SD). Every controlled
        step runs here: the controls' weighted residuals are summed (`cldm.control.control_residuals`) and
        added to the UNet's skip connections and middle block (only the middle one with `only_mid_control`)."""
        t = self._timesteps(t, x_noisy.shape[0], x_noisy.device)
        residuals = control_residuals(controls, x_noisy, t, context)
        return self.model(x_noisy, t, context, residuals, self.only_mid_control)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor | int, cond: dict) -> torch.Tensor:
        """eps prediction with this model's ControlNet at `control_scales` (the original's interface);
        cond = {"c_concat": [hint, ...] or None, "c_crossattn": [context, ...]}."""
        if not isinstance(cond, dict) or not cond.get("c_crossattn"):
            raise ValueError("cond must be a dict with a non-empty 'c_crossattn' list")
        unknown = set(cond) - {"c_concat", "c_crossattn"}
        if unknown:
            raise ValueError(f"unknown conditioning keys {sorted(unknown)}")
        context = torch.cat(list(cond["c_crossattn"]), dim=1)
        controls = []
        if cond.get("c_concat") is not None:
            hint = torch.cat(list(cond["c_concat"]), dim=1)
            controls.append(Control(self.control_model, hint, self.control_scales))
        return self.eps(x_noisy, t, context, controls)

    def get_learned_conditioning(self, prompts: list[str], chunks: int = 1, clip_skip: int = 1) -> torch.Tensor:
        """Text embeddings (N, chunks·77, width); see `ldm.clip.FrozenCLIPEmbedder`."""
        return self.cond_stage_model(prompts, chunks=chunks, clip_skip=clip_skip)

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
