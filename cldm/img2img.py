"""Sampling that starts from an image: the image's latent, the inpaint mask in latent and pixel space.

Two uses (the ControlNet 1.1 tile and inpaint apps):
* img2img: the image latent z0, noised to some level, replaces pure noise as the start (where each sampler
  starts: `cldm.samplers.Sampler.img2img`);
* inpainting: sampling from pure noise, but before each step the kept region (keep = 1) is overwritten with z0
  noised to that step's level (`LatentMask`, applied by every sampler of `cldm.samplers`); the decoded images are
  pasted into the input with the soft pixel mask (`composite`).

Masks: the caller's pixel mask is H×W float32 in [0, 1], 1 = repaint, already blurred. The latent keep-mask is
1 − (that mask area-resized to H/8×W/8); the hint is −1 where the pixel mask exceeds 0.5 (`HINT_MASK_THRESHOLD`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import cv2
import numpy as np
import torch
from torch import Tensor

from ldm.vae import DiagonalGaussianDistribution

HINT_MASK_THRESHOLD = 0.5  # pixels whose mask exceeds this get the inpaint hint's −1


def vae_pixels(image: np.ndarray) -> Tensor:
    """The VAE input of an H×W×3 uint8 image: 1×3×H×W float32 v/127 − 1.

    Divides by 127, not 127.5 (range −1 … 1.00787): the 1.1 tile and inpaint apps encode their images so, and
    their results were made that way."""
    pixels = torch.from_numpy(image.astype(np.float32) / 127.0 - 1.0)
    return pixels.permute(2, 0, 1).unsqueeze(0)


def encode_image(model: Any, image: np.ndarray, n: int, generator: Optional[torch.Generator]) -> Tensor:
    """z0 (n×C×H/8×W/8, float32): the VAE posterior of `image` (`vae_pixels`) sampled n times with noise from
    `generator` (one n-sample draw, as encoding n copies of the image would make), × the model's scale factor."""
    with torch.no_grad():
        once = model.encode_first_stage(vae_pixels(image).to(model.device, model.dtype))
        posterior = DiagonalGaussianDistribution(once.parameters.expand(n, -1, -1, -1))
        return model.get_first_stage_encoding(posterior, generator).float()


def latent_keep_mask(mask: np.ndarray, down: int = 8) -> np.ndarray:
    """The samplers' keep-mask (float32 (H/down)×(W/down), 1 = keep the image): 1 − the pixel mask
    area-averaged onto the latent grid."""
    height, width = mask.shape
    latent = cv2.resize(np.ascontiguousarray(mask, np.float32), (width // down, height // down),
                        interpolation=cv2.INTER_AREA)
    return 1.0 - latent


def hint_mask(mask: np.ndarray) -> np.ndarray:
    """H×W bool: where the inpaint hint is −1 (`cldm.control.ControlUnit.hint_mask`)."""
    return mask > HINT_MASK_THRESHOLD


def composite(decoded: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The generated pixels pasted into `image` with the soft mask, then clipped: `decoded` = VAE output
    ×127.5 + 127.5 (N×H×W×3 float, not clipped yet), `image` H×W×3 uint8, `mask` H×W in [0, 1] (1 = generated).
    Returns N×H×W×3 uint8; where the mask is 0 the pixels equal `image`."""
    m = mask.astype(np.float32)[None, :, :, None]
    blended = decoded.astype(np.float32) * m + image.astype(np.float32)[None] * (1.0 - m)
    return blended.clip(0, 255).astype(np.uint8)


@dataclass(frozen=True)
class LatentMask:
    """Masked sampling: where `keep` is 1 the latent follows the image latent `z0`, re-noised to each step's level.

    Works in the variance-preserving space of the UNet's input, x = √ᾱ·x0 + √(1−ᾱ)·ε. A sampler calls
    `blend(x, ᾱ, generator)` before each model call with the ᾱ of the level x is at (not after the last step):
    x ← (√ᾱ·z0 + √(1−ᾱ)·z)·keep + x·(1 − keep), z a fresh N(0, I) draw (float32, on the CPU, from `generator`)."""

    z0: Tensor  # N×C×h×w float32, the image latent (× scale factor)
    keep: Tensor  # broadcastable to z0 (N×1×h×w or 1×1×h×w), in [0, 1]

    def noised(self, alpha_bar: float, generator: Optional[torch.Generator]) -> Tensor:
        """q_sample(z0, ᾱ) = √ᾱ·z0 + √(1−ᾱ)·z with one fresh draw z from `generator`."""
        noise = torch.randn(self.z0.shape, generator=generator, dtype=torch.float32).to(self.z0.device)
        return math.sqrt(alpha_bar) * self.z0 + math.sqrt(1.0 - alpha_bar) * noise

    def blend(self, x: Tensor, alpha_bar: float, generator: Optional[torch.Generator]) -> Tensor:
        return self.noised(alpha_bar, generator) * self.keep + x * (1.0 - self.keep)
