"""How ControlNets steer the SD UNet: the one control path, several ControlNets at once, the control modes.

Every denoising step with control goes through `ControlLDM.eps(x, t, context, controls)`: each `Control`
(a ControlNet, its hint tensor and one weight per connection) gives 13 residuals, each weighted; the weighted
residuals of all controls are summed with no further weighting and added to the SD UNet's skip connections
and middle block. `ControlLDM.apply_model` (one ControlNet at `control_scales`, the original's interface) and
the sampling pipeline's `ControlledDenoiser` (any number of units, a control mode, active windows) both build
their `Control`s and call it.

A `ControlUnit` is one ControlNet with its control map (H×W×3 uint8), strength and active window. At sampling
step i of n (i = 0 is the first, noisiest step) a unit is active when ``start <= i / n < end``.

Control modes (weights of the 13 connections, index 0 = shallowest input block … 12 = middle block):
* "balanced" (the original's normal mode): control on both CFG branches, every weight = strength;
* "guess" (the original's guess mode): control on the conditional branch only, weight_i = strength·0.825^(12−i);
* "cfg_resolution_weighting" (ControlNet paper, sec. 3.4): control on the conditional branch only,
  weight_i = strength·h_0/h_i, h_i being the latent height of connection i — 64/64, …, 64/8 for a 512 image;
* "conditional" (the 1.1 shuffle model): control on the conditional branch only, every weight = strength; the
  unconditional branch is plain SD.

Global average pooling (the 1.1 shuffle model, `ControlNet.global_average_pooling`): after weighting, each of
that ControlNet's residuals is replaced by its mean over H and W (N×C×1×1), which the UNet's additions broadcast.

Names: a *control map* is the H×W×3 uint8 image a detector makes (what the pages show); the *hint* is the
N×3×H×W tensor in [0, 1] made from it and fed to the ControlNet (the checkpoints' `input_hint_block`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

# One weight per residual, or a rule that computes them from the residuals (their sizes).
Scales = Union[Sequence[float], Callable[[list[Tensor]], Sequence[float]]]


@dataclass(frozen=True)
class Control:
    """One ControlNet's input to a denoising step: the network, its hint tensor and the weight of each residual;
    optionally the hint already through the network's hint encoder (`ControlNet.embed_hint`)."""

    net: nn.Module
    hint: Tensor
    scales: Scales
    embedded_hint: Optional[Tensor] = None


def scale_residuals(residuals: Sequence[Tensor], scales: Sequence[float]) -> list[Tensor]:
    if len(residuals) != len(scales):
        raise ValueError(f"{len(scales)} control scales for {len(residuals)} ControlNet outputs")
    return [r * s for r, s in zip(residuals, scales)]


def sum_residuals(*residual_lists: Sequence[Tensor]) -> list[Tensor]:
    """Element-wise sum of several ControlNets' (already scaled) residual lists."""
    if not residual_lists or len({len(r) for r in residual_lists}) != 1:
        raise ValueError("need one or more residual lists of equal length")
    # A pooled residual (N×C×1×1) is broadcast to the others' size.
    return [torch.stack(torch.broadcast_tensors(*parts)).sum(0) if len(parts) > 1 else parts[0]
            for parts in zip(*residual_lists)]


def pool_residuals(residuals: Sequence[Tensor]) -> list[Tensor]:
    """Global average pooling: each residual's mean over H and W, kept as N×C×1×1."""
    return [r.mean(dim=(2, 3), keepdim=True) for r in residuals]


def control_residuals(controls: Sequence[Control], x: Tensor, t: Tensor, context: Tensor) -> Optional[list[Tensor]]:
    """The summed, weighted residuals of `controls` for this step; None without controls (plain SD)."""
    weighted = []
    for control in controls:
        residuals = control.net(x, control.hint, t, context, control.embedded_hint)
        scales = control.scales(residuals) if callable(control.scales) else control.scales
        scaled = scale_residuals(residuals, scales)
        weighted.append(pool_residuals(scaled) if getattr(control.net, "global_average_pooling", False) else scaled)
    return sum_residuals(*weighted) if weighted else None


class ControlMode(str, Enum):
    BALANCED = "balanced"
    GUESS = "guess"
    CFG_RESOLUTION_WEIGHTING = "cfg_resolution_weighting"
    CONDITIONAL = "conditional"

    @property
    def controls_unconditional(self) -> bool:
        return self is ControlMode.BALANCED


GUESS_DECAY = 0.825


def block_weights(mode: ControlMode, strength: float, residuals: list[Tensor]) -> list[float]:
    """Per-connection weights of one unit's residuals under `mode` (see module docstring)."""
    n = len(residuals)
    if mode in (ControlMode.BALANCED, ControlMode.CONDITIONAL):
        return [strength] * n
    if mode is ControlMode.GUESS:
        return [strength * GUESS_DECAY ** (n - 1 - i) for i in range(n)]
    top = residuals[0].shape[-2]
    return [strength * top / r.shape[-2] for r in residuals]


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet (`control_model`, e.g. `model.control_model`) with its H×W×3 uint8 control map.

    `hint_mask` (H×W bool, optional): pixels whose hint is −1 in all channels instead of map/255 (the 1.1
    inpaint model's "repaint here" marker)."""

    control_model: nn.Module
    control_map: np.ndarray
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    hint_mask: Optional[np.ndarray] = None

    def active(self, step: int, total: int) -> bool:
        return self.start <= step / total < self.end


class ControlledDenoiser:
    """`denoise(x, t, cond)` for the samplers and `guided_model_fn`: the SD UNet of `model` under `units`.

    `cond["c_concat"]` holds one hint tensor per unit (or is None: plain SD); `cond["c_crossattn"]` the text.
    `timesteps` (ascending, as sampled) maps each t back to its step index for the active windows. A timestep
    that repeats (the Karras schedule rounds two late ones to the same t from about 45 steps) counts as its
    first step. Each hint goes through its ControlNet's hint encoder once per run, not once per step.
    """

    def __init__(self, model: nn.Module, units: list[ControlUnit], mode: ControlMode, timesteps: Tensor):
        self.model = model
        self.units = units
        self.mode = mode
        self.step_of: dict[float, int] = {}
        for i, t in enumerate(timesteps.flip(0)):
            self.step_of.setdefault(float(t), i)
        self.total = len(timesteps)
        self.dtype = model.dtype
        self.embedded: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}  # (net, hint) ids -> (hint, embedding)

    def embed(self, net: nn.Module, hint: Tensor) -> Tensor:
        key = (id(net), id(hint))
        if key not in self.embedded:  # the hint is kept with its embedding, so its id is not reused meanwhile
            self.embedded[key] = (hint, net.embed_hint(hint))
        return self.embedded[key][1]

    def controls(self, t: Tensor, hints: Optional[list[Tensor]]) -> list[Control]:
        if hints is None:
            return []
        step = self.step_of[float(t[0])]
        return [Control(unit.control_model, hint, partial(block_weights, self.mode, unit.strength),
                        self.embed(unit.control_model, hint))
                for unit, hint in zip(self.units, hints, strict=True) if unit.active(step, self.total)]

    def __call__(self, x: Tensor, t: Tensor, cond: dict) -> Tensor:
        context = torch.cat(cond["c_crossattn"], 1)
        return self.model.eps(x.to(self.dtype), t, context, self.controls(t, cond["c_concat"]))
