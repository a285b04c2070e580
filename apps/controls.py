"""The controls every generation page shares, built from `cldm.limits` (the one definition of each range),
and the server-side check of a value sent for any control."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from annotator.registry import Param
from annotator.util import AnnotatorInputError
from apps.errors import InvalidInput
from cldm import limits
from cldm.pipeline import DEFAULT_A_PROMPT, DEFAULT_N_PROMPT
from cldm.samplers import SAMPLERS

MAX_PROMPT_CHARS = 1000
A_PROMPT = DEFAULT_A_PROMPT
N_PROMPT = DEFAULT_N_PROMPT


def limited(name: str, label: str, limit: limits.Limit) -> Param:
    return Param(name, label, limit.default, limit.minimum, limit.maximum, limit.step)


# In the order of the "Advanced options" accordion (an app's own controls go between GUESS_MODE and STEPS).
NUM_SAMPLES = limited("num_samples", "Images", limits.NUM_SAMPLES)
IMAGE_RESOLUTION = limited("image_resolution", "Image Resolution", limits.IMAGE_RESOLUTION)
STRENGTH = limited("strength", "Control Strength", limits.STRENGTH)
GUESS_MODE = Param("guess_mode", "Guess Mode", False)
STEPS = limited("ddim_steps", "Steps", limits.STEPS)
SCALE = limited("scale", "Guidance Scale", limits.GUIDANCE_SCALE)
SEED = limited("seed", "Seed", limits.SEED)
# The original's eta is an unbounded number box; the range is DDIM's (see cldm.limits).
ETA = limited("eta", "eta (DDIM)", limits.ETA)
START = limited("start", "Start", limits.CONTROL_START)
END = limited("end", "End", limits.CONTROL_END)
BEFORE_EXTRAS = (NUM_SAMPLES, IMAGE_RESOLUTION, STRENGTH, GUESS_MODE)
AFTER_EXTRAS = (STEPS, SCALE, SEED, ETA)
SAMPLER_CHOICES = [(s.label, s.name) for s in SAMPLERS.values()]
DEFAULT_SAMPLER = limits.DEFAULT_SAMPLER
# The Fast preset's ranges for the same two controls (same names and labels).
FAST_STEPS = replace(STEPS, default=limits.FAST_STEPS.default, minimum=limits.FAST_STEPS.minimum,
                     maximum=limits.FAST_STEPS.maximum)
FAST_SCALE = replace(SCALE, default=limits.FAST_GUIDANCE_SCALE.default, minimum=limits.FAST_GUIDANCE_SCALE.minimum,
                     maximum=limits.FAST_GUIDANCE_SCALE.maximum)
LORA_SCALE = Param("lora_scale", "LoRA scale", 1.0, 0.0, 2.0, 0.05)


def with_fast_ranges(params: tuple[Param, ...], fast: bool) -> tuple[Param, ...]:
    """`params` with Steps and Guidance Scale in the Fast preset's ranges when `fast`."""
    if not fast:
        return params
    swap = {STEPS.name: FAST_STEPS, SCALE.name: FAST_SCALE}
    return tuple(swap.get(p.name, p) for p in params)


@dataclass(frozen=True)
class Choices:
    """How a request samples: the sampler, the Fast preset, the LoRAs merged ((name or path, scale) pairs)."""

    sampler: str = DEFAULT_SAMPLER
    fast: bool = False
    loras: tuple[tuple[str, float], ...] = ()
    fast_decode: bool = False  # TAESD instead of the VAE for the final images

    def all_loras(self) -> tuple[tuple[str, float], ...]:
        """The LoRAs to merge: the chosen ones, plus the LCM-LoRA with Fast."""
        return self.loras + (((limits.FAST_LORA, 1.0),) if self.fast else ())


def check_choices(sampler: Any = None, fast: Any = False, loras: Any = None, lora_scale: Any = LORA_SCALE.default,
                  fast_decode: Any = False, lora_files: Mapping[str, Path] | None = None) -> Choices:
    """The sampler (Fast: always LCM), the Fast switch, the chosen LoRA files (names offered by the server) and
    Fast decode."""
    fast, fast_decode = (False if v is None else v for v in (fast, fast_decode))
    for label, value in (("Fast", fast), ("Fast decode", fast_decode)):
        if not isinstance(value, bool):
            raise InvalidInput(f"{label}: expected true or false, got {value!r}")
    sampler = limits.FAST_SAMPLER if fast else check_sampler(sampler)
    names = [] if loras in (None, "") else ([loras] if isinstance(loras, str) else loras)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise InvalidInput(f"LoRA: expected a list of file names, got {loras!r}")
    offered = lora_files or {}
    unknown = [n for n in names if n not in offered]
    if unknown:
        raise InvalidInput(f"LoRA: {', '.join(map(repr, unknown))} not offered; choose from "
                           f"{', '.join(offered) or 'none (put files in models/lora/ or start with --lora FILE)'}")
    scale = check_param(LORA_SCALE, lora_scale)
    return Choices(sampler, fast, tuple((str(offered[n]), scale) for n in dict.fromkeys(names)), fast_decode)


def check_param(param: Param, value: Any) -> Any:
    """`value` typed and range-checked for `param`; InvalidInput names the control and the range."""
    if value is None:
        raise InvalidInput(f"{param.label}: a value is required")
    if isinstance(value, str) and param.kind is not bool:  # API callers may send "20"
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidInput(f"{param.label}: expected a number, got {value!r}") from None
    try:
        value = param.coerce(value)
    except AnnotatorInputError as err:
        raise InvalidInput(str(err)) from None
    if param.kind is int and param.step not in (None, 1) and param.minimum is not None:
        if (value - param.minimum) % param.step:
            raise InvalidInput(f"{param.label}: {value} is not one of {param.minimum}, {param.minimum + param.step}, … (step {param.step})")
    return value


def check_sampler(value: Any) -> str:
    """A sampler name of `cldm.samplers.SAMPLERS` (empty: the default, DDIM)."""
    if value is None or value == "":
        return DEFAULT_SAMPLER
    if not isinstance(value, str) or value not in SAMPLERS:
        raise InvalidInput(f"Sampler: {value!r} is not one of {', '.join(SAMPLERS)}")
    return value


def sampler_summary(name: str, steps: int) -> str:
    """What the result line says about how it was sampled, e.g. "DDIM, 20 steps"."""
    return f"{SAMPLERS[name].label}, {steps} step{'s' if steps != 1 else ''}"


# Refused in prompts: NUL and the other C0/C1 control characters (tab and line breaks are fine) and the
# bidirectional embeddings, overrides and isolates, which make text display otherwise than it reads. Any other
# Unicode (accents, CJK, right-to-left scripts, emoji) is accepted as it is.
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def check_text(label: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{label}: expected text, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"{label}: {len(value)} characters is too long (at most {MAX_PROMPT_CHARS})")
    if found := CONTROL_CHARS.search(value):
        name = "a NUL byte" if found.group() == "\0" else "a control character"
        raise InvalidInput(f"{label}: {name} (U+{ord(found.group()):04X}) at position {found.start() + 1}; remove it "
                           "(tabs and line breaks are fine)")
    if found := BIDI_CONTROLS.search(value):
        raise InvalidInput(f"{label}: a bidirectional override (U+{ord(found.group()):04X}) at position "
                           f"{found.start() + 1}; remove it (right-to-left text itself is fine)")
    return value
