"""Several ControlNets in one denoising step, and the three control modes.

A `ControlUnit` is one ControlNet with its control map, strength and active window. At DDIM step i of n
(i = 0 is the first, noisiest step) a unit is active when ``start <= i / n < end``; the residuals of the
active units, each weighted per block by its mode, are summed with no further weighting and added to the
SD UNet like a single ControlNet's.

Control modes (weights of the 13 connections, index 0 = shallowest input block … 12 = middle block):
* "balanced" (the original's normal mode): control on both CFG branches, every weight = strength;
* "guess" (the original's guess mode): control on the conditional branch only, weight_i = strength·0.825^(12−i);
* "cfg_resolution_weighting" (ControlNet paper, sec. 3.4): control on the conditional branch only,
  weight_i = strength·h_0/h_i, h_i being the latent height of connection i — 64/64, …, 64/8 for a 512 image.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from cldm.cldm import scale_residuals, sum_residuals


class ControlMode(str, Enum):
    BALANCED = "balanced"
    GUESS = "guess"
    CFG_RESOLUTION_WEIGHTING = "cfg_resolution_weighting"

    @property
    def controls_unconditional(self) -> bool:
        return self is ControlMode.BALANCED


GUESS_DECAY = 0.825


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet (`control_model`, e.g. `model.control_model`) with its H×W×3 uint8 control map."""

    control_model: nn.Module
    hint: np.ndarray
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def active(self, step: int, total: int) -> bool:
        return self.start <= step / total < self.end


def block_weights(mode: ControlMode, strength: float, residuals: list[Tensor]) -> list[float]:
    """Per-connection weights of one unit's residuals under `mode` (see module docstring)."""
    n = len(residuals)
    if mode is ControlMode.BALANCED:
        return [strength] * n
    if mode is ControlMode.GUESS:
        return [strength * GUESS_DECAY ** (n - 1 - i) for i in range(n)]
    top = residuals[0].shape[-2]
    return [strength * top / r.shape[-2] for r in residuals]


class ControlledDenoiser:
    """`denoise(x, t, cond)` for `sample_ddim`/`guided_model_fn` driving the SD UNet of `model` with `units`.

    `cond["c_concat"]` holds one hint tensor per unit (or is None: plain SD); `cond["c_crossattn"]` the text.
    `timesteps` (ascending, as sampled) maps each t back to its step index for the active windows.
    """

    def __init__(self, model: nn.Module, units: list[ControlUnit], mode: ControlMode, timesteps: Tensor):
        self.model = model
        self.units = units
        self.mode = mode
        self.step_of = {int(t): i for i, t in enumerate(timesteps.flip(0))}
        self.total = len(timesteps)
        self.dtype = model.dtype

    def residuals(self, x: Tensor, t: Tensor, context: Tensor, hints: list[Tensor]) -> Optional[list[Tensor]]:
        step = self.step_of[int(t[0])]
        weighted = []
        for unit, hint in zip(self.units, hints, strict=True):
            if unit.active(step, self.total):
                res = unit.control_model(x, hint, t, context)
                weighted.append(scale_residuals(res, block_weights(self.mode, unit.strength, res)))
        return sum_residuals(*weighted) if weighted else None

    def __call__(self, x: Tensor, t: Tensor, cond: dict) -> Tensor:
        x = x.to(self.dtype)
        context = torch.cat(cond["c_crossattn"], 1)
        control = None if cond["c_concat"] is None else self.residuals(x, t, context, cond["c_concat"])
        unet = self.model.model.diffusion_model
        return unet(x, t, context=context, control=control, only_mid_control=self.model.only_mid_control)
