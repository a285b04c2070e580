"""The controls every generation page shares, built from `cldm.limits` (the one definition of each range),
and the server-side check of a value sent for any control."""
from __future__ import annotations

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


def check_param(param: Param, value: Any) -> Any:
    """`value` typed and range-checked for `param`; InvalidInput names the control and the range."""
    if value is None:
        raise InvalidInput(f"{param.label}: a value is required")
    if isinstance(value, str):  # API callers may send "20"
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


def check_text(label: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{label}: expected text, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"{label}: {len(value)} characters is too long (at most {MAX_PROMPT_CHARS})")
    return value
