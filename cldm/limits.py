"""The one definition of every generation setting's default and allowed range.

`GenerationParams` checks its values against these; the pages build their sliders from them and the server,
the API and the CLI validate with them, so a range is written once.

Why these ranges:
* image resolution 256–768 in steps of 64: the original apps' range. SD 1.5 and its ControlNets were trained
  at 512 px; below 256 they fall apart, above 768 they repeat content and the cost grows with the square
  (a 768 image already takes 2.25× the time and memory of a 512 one). Maps are multiples of 64 px (the
  latent is 1/8 and the UNet halves it three times).
* eta 0–1: DDIM's σ_t = eta·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev)); above 1, σ² can exceed 1 − ᾱ_prev and
  the update takes the square root of a negative number (NaN images). eta = 1 is DDPM-like ancestral sampling.
* steps 1–100, guidance 0.1–30, strength 0–2, 1–12 images: the original apps' sliders.
* seed −1 (random) … 2³¹−1.
* prompt chunks 1 or 3 (3 × 75 tokens, the 1.1 anime-lineart model's 3×77 context), CLIP skip 1 or 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

Number = Union[int, float]


@dataclass(frozen=True)
class Limit:
    default: Number
    minimum: Number
    maximum: Number
    step: Optional[Number]  # None: any value in range (a number box, not a slider)

    def contains(self, value: Number) -> bool:
        return self.minimum <= value <= self.maximum


MAX_SEED = 2147483647
RANDOM_SEED_RANGE = 65535  # seed −1 draws one in [0, 65535], as the original

NUM_SAMPLES = Limit(1, 1, 12, 1)
IMAGE_RESOLUTION = Limit(512, 256, 768, 64)
# The 1.1 tile and anime-lineart apps' slider (the original's: up to 2048). GenerationParams accepts this range;
# each app validates its own slider's.
LARGE_IMAGE_RESOLUTION = Limit(512, 256, 2048, 64)
PROMPT_CHUNKS = (1, 3)  # allowed values
CLIP_SKIPS = (1, 2)
STRENGTH = Limit(1.0, 0.0, 2.0, 0.01)
STEPS = Limit(20, 1, 100, 1)
GUIDANCE_SCALE = Limit(9.0, 0.1, 30.0, 0.1)
SEED = Limit(-1, -1, MAX_SEED, 1)
ETA = Limit(0.0, 0.0, 1.0, None)
CONTROL_START = Limit(0.0, 0.0, 1.0, 0.01)
CONTROL_END = Limit(1.0, 0.0, 1.0, 0.01)

DEFAULT_SAMPLER = "ddim"  # the original's; the others are in cldm.samplers.SAMPLERS

# The Fast preset: the LCM-LoRA (Luo et al. 2023) merged into the base, the LCM sampler, a few steps and no real
# guidance (LCM was distilled with guidance folded in; above 2 its images burn).
FAST_STEPS = Limit(4, 2, 8, 1)
FAST_GUIDANCE_SCALE = Limit(1.0, 1.0, 2.0, 0.1)
FAST_SAMPLER = "lcm"
FAST_LORA = "lcm_lora"  # the weights-table key of the LCM-LoRA for SD 1.5
# Samplers with fewer steps than STEPS allows: LCM's schedule picks from a 50-step distillation grid.
MAX_STEPS = {"lcm": 50}
