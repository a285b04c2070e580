"""Hosting on a Hugging Face Space.

* ZeroGPU: the pages' generation functions run under `spaces.GPU` (the `spaces` package is imported only on a
  Space, i.e. with SPACE_ID set, and only if installed; everywhere else the functions are left as they are),
  asking for a duration estimated from the request (`gpu_seconds`).
* `preload_from_hub`: the weight files a Space should download at build time (the base, every app's default
  ControlNet and its annotator, the LCM-LoRA and TAESD), derived from `weights.table.WEIGHTS`;
  `python -m apps.space` writes them into README.md's front matter (tests check it is current).
"""
from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cldm import limits

README = Path(__file__).resolve().parents[1] / "README.md"

# gpu_seconds = FIXED + PER_STEP · steps · images · (resolution / 512)² · (1 + EXTRA_UNIT · (units − 1)),
# rounded up to 10 s and kept within [MIN_SECONDS, MAX_SECONDS]. PER_STEP is one sampling step of one 512²
# image with classifier-free guidance and one ControlNet in float16 on a ZeroGPU slice (an SD 1.5 UNet pass
# at batch 2 takes about 0.05 s on an A100-class GPU, a ControlNet adds about 40 %; doubled for headroom);
# FIXED covers moving the weights onto the GPU, the annotator, the text encoder and decoding.
FIXED = 20.0
PER_STEP = 0.15
EXTRA_UNIT = 0.4
MIN_SECONDS, MAX_SECONDS = 30, 240


def _number(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) and number > 0 else default


def gpu_seconds(steps: Any, images: Any, resolution: Any, units: int = 1) -> int:
    """The GPU time to ask for (seconds). Values the request will refuse count as the largest allowed."""
    steps = min(_number(steps, limits.STEPS.maximum), limits.STEPS.maximum)
    images = min(_number(images, limits.NUM_SAMPLES.maximum), limits.NUM_SAMPLES.maximum)
    resolution = min(_number(resolution, limits.LARGE_IMAGE_RESOLUTION.maximum), limits.LARGE_IMAGE_RESOLUTION.maximum)
    work = steps * images * (resolution / 512) ** 2 * (1 + EXTRA_UNIT * (max(units, 1) - 1))
    seconds = math.ceil((FIXED + PER_STEP * work) / 10) * 10
    return int(min(max(seconds, MIN_SECONDS), MAX_SECONDS))


def zero_gpu(fn: Callable, duration: Callable[..., int]) -> Callable:
    """`fn` under `spaces.GPU(duration=duration)` on a Space with the `spaces` package; `fn` itself elsewhere.
    `duration` is called with `fn`'s arguments."""
    if not os.environ.get("SPACE_ID") or importlib.util.find_spec("spaces") is None:
        return fn
    import spaces

    # spaces.GPU runs plain functions and generators in a GPU worker (forked; arguments and results are
    # pickled) and refuses coroutine functions; the pages' handlers are async generators (so that a closed page
    # stops its run), so on ZeroGPU they are driven from a plain generator.
    return spaces.GPU(duration=duration)(_driven(fn) if inspect.isasyncgenfunction(fn) else fn)


def _driven(fn: Callable) -> Callable:
    """The async generator function `fn` as a plain generator function, each item awaited on a private loop."""

    @functools.wraps(fn)
    def generator(*args, **kwargs):
        items = fn(*args, **kwargs)
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    yield loop.run_until_complete(items.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.run_until_complete(items.aclose())
            loop.close()

    return generator


def app_duration(names: list[str], leading: int = 1) -> Callable[..., int]:
    """The duration function of a single app's handler (cancel, image, the `leading` inputs before the controls:
    the prompt, and on some pages the mask image and the Preprocessor; *controls in `names` order, …)."""

    def duration(cancel, image, *args, **kwargs) -> int:
        rest = args[leading:]
        values = dict(zip(names, rest))
        return gpu_seconds(values.get("ddim_steps"), values.get("num_samples"), values.get("image_resolution"))

    return duration


# ---- preload_from_hub --------------------------------------------------------------------------------------------


def preload_keys() -> list[str]:
    """The weights keys a Space needs for its default settings, in table order."""
    from annotator.registry import REGISTRY
    from apps.registry import APPS
    from cldm.limits import FAST_LORA
    from weights.table import WEIGHTS

    wanted = {"sd15", FAST_LORA, "taesd"}
    for spec in APPS.values():
        wanted.add(spec.weights[0])
        detector = spec.preprocessors[0].detector if spec.preprocessors else spec.annotator  # the default choice's
        if detector:
            wanted.update(REGISTRY[detector].weights)
    return [key for key in WEIGHTS if key in wanted]


def preload_entries(keys: Iterable[str] | None = None) -> list[str]:
    """`preload_from_hub` entries: "repo file1,file2", one per repository, in table order."""
    from weights.table import WEIGHTS

    files: dict[str, list[str]] = {}
    for key in preload_keys() if keys is None else keys:
        files.setdefault(WEIGHTS[key].repo, []).append(WEIGHTS[key].filename)
    return [f"{repo} {','.join(names)}" for repo, names in files.items()]


FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.S)
PRELOAD_BLOCK = re.compile(r"^preload_from_hub:\n(?:  - .*\n?)*", re.M)


def front_matter_preload(readme: str) -> list[str]:
    """The `preload_from_hub` entries of a README's front matter."""
    match = FRONT_MATTER.match(readme)
    block = PRELOAD_BLOCK.search(match.group(1) + "\n") if match else None
    return [line.strip()[2:] for line in block.group(0).splitlines()[1:]] if block else []


def with_preload(readme: str, entries: list[str]) -> str:
    """`readme` with its front matter's `preload_from_hub` set to `entries`."""
    match = FRONT_MATTER.match(readme)
    if match is None:
        raise ValueError("README.md has no front matter")
    header = PRELOAD_BLOCK.sub("", match.group(1) + "\n").rstrip("\n")
    block = "preload_from_hub:\n" + "".join(f"  - {entry}\n" for entry in entries)
    return f"---\n{header}\n{block}---\n" + readme[match.end():]


def main() -> int:
    README.write_text(with_preload(README.read_text(), preload_entries()))
    print("\n".join(preload_entries()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
