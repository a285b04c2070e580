"""Between a run and the settings its PNGs carry (`apps.png_info.ImageInfo`): what a single app or the
multi-condition page ran with, and, back from a PNG, the checked values that make a page (or the CLI) run
the same way again. No UI here: the pages and `launch.py generate --from-png` use it alike."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from apps.backend import Backend
from apps.controls import (END, LORA_SCALE, START, STRENGTH, Choices, check_choices, check_param, check_text,
                           with_fast_ranges)
from apps.errors import InvalidInput
from apps.multi_request import ANNOTATOR_APPS, COMMON, NO_ANNOTATOR, MultiRequest, MultiResult
from apps.png_info import ControlNetInfo, ImageInfo, LoraInfo
from apps.registry import APPS
from apps.result_files import Result
from apps.spec import AppResult, AppSpec, Request, validate
from cldm.control import ControlMode
from cldm.control_bank import MAX_UNITS
from weights.hashes import short_hash
from weights.table import CONTROLNETS, WEIGHTS

BASE_KEY = "sd15"
MULTI = "multi"


# ---- a run -> its settings -------------------------------------------------------------------------------------


def weights_name(key: str) -> str:
    """The name a weights key is written under: its file's name without extension."""
    return Path(WEIGHTS[key].basename).stem


def weights_key(name: str) -> str | None:
    """The weights key a written name stands for (a key itself, or a weight file's name), or None."""
    if name in WEIGHTS:
        return name
    return next((key for key in WEIGHTS if weights_name(key) == name), None)


def _controlnet(backend: Backend, key: str) -> tuple[str, str | None]:
    if backend.tiny:
        return key, None
    path = backend.model.files.resolve(key)  # may be another published copy of the same weights
    return Path(path).stem, short_hash(path, 8)


def _base(backend: Backend) -> tuple[str, str | None]:
    if backend.tiny:
        return BASE_KEY, None
    base = backend.model.base  # --base: a single file (hashed), a diffusers folder or repo id (named only)
    if base is not None:
        return Path(base).stem, short_hash(base) if Path(base).is_file() else None
    path = backend.model.files.resolve(BASE_KEY)
    return Path(path).stem, short_hash(path)


def _loras(choices: Choices) -> tuple[LoraInfo, ...]:
    return tuple(LoraInfo(Path(path).name, scale, short_hash(path) if Path(path).is_file() else None)
                 for path, scale in choices.loras)


def _common(app: str, backend: Backend, values: Mapping[str, Any], prompt: str, a_prompt: str, n_prompt: str,
            choices: Choices, seed: int, size: tuple[int, int], mode: str,
            controlnets: tuple[ControlNetInfo, ...]) -> ImageInfo:
    model, model_hash = _base(backend)
    return ImageInfo(
        app=app, prompt=prompt, a_prompt=a_prompt, n_prompt=n_prompt, steps=values["ddim_steps"],
        sampler=choices.sampler, scale=values["scale"], seed=seed, width=size[1], height=size[0], model=model,
        model_hash=model_hash, image_resolution=values["image_resolution"], eta=values["eta"], control_mode=mode,
        controlnets=controlnets, num_samples=values["num_samples"], fast=choices.fast,
        fast_decode=choices.fast_decode, loras=_loras(choices),
    )


def app_module(spec: AppSpec, request: Request) -> str:
    """The preprocessor a single app ran: its annotator (1.0), the Preprocessor choice (1.1), or "none"."""
    if request.preprocessor is not None:
        return request.preprocessor.label
    return spec.annotator or NO_ANNOTATOR


def app_info(spec: AppSpec, backend: Backend, request: Request, seed: int, size: tuple[int, int],
             mode: str | None = None) -> ImageInfo:
    """The settings of a single app's run (`size`: the images' H×W, `seed`: the one used, `mode`: the control
    mode used, by default the one Guess Mode chooses)."""
    v = request.values
    unit = ControlNetInfo(0, app_module(spec, request), *_controlnet(backend, request.weights), weight=v["strength"],
                          params={p.name: v[p.name] for p in spec.primary + spec.extras})
    if mode is None:
        mode = (ControlMode.GUESS if v.get("guess_mode") else ControlMode.BALANCED).value
    return _common(spec.name, backend, v, request.prompt, request.a_prompt, request.n_prompt, request.choices, seed,
                   size, mode, (unit,))


def multi_info(backend: Backend, request: MultiRequest, seed: int, size: tuple[int, int]) -> ImageInfo:
    """The settings of a multi-condition run."""
    units = tuple(ControlNetInfo(u.number - 1, u.annotator, *_controlnet(backend, u.weights), weight=u.strength,
                                 start=u.start, end=u.end, params=dict(u.params)) for u in request.units)
    return _common(MULTI, backend, request.values, request.prompt, request.a_prompt, request.n_prompt,
                   request.choices, seed, size, request.mode.value, units)


def _results(info: ImageInfo, maps: list[tuple[np.ndarray, str]], samples: list[np.ndarray]) -> list[Result]:
    """The maps (with the run's settings) and the samples (each with its place in the batch)."""
    return [Result(image, info, label) for image, label in maps] + \
        [Result(image, replace(info, batch_pos=k), str(k)) for k, image in enumerate(samples)]


def save_app_results(spec: AppSpec, backend: Backend, request: Request, result: AppResult) -> list[Path]:
    """A single app's map (or what it shows first: the tile input, the inpaint hint; none for shuffle without
    a preprocessor) and samples as PNGs with their settings (`backend.results`); map first."""
    info = app_info(spec, backend, request, result.seed, result.samples[0].shape[:2], result.mode)
    shown = [] if result.display_map is None else [(result.display_map, result.display_kind)]
    return backend.results.save(spec.name, result.seed, _results(info, shown, result.samples))


def save_multi_results(backend: Backend, request: MultiRequest, result: MultiResult) -> list[Path]:
    """The multi-condition page's maps (one per unit) and samples as PNGs with their settings; maps first."""
    info = multi_info(backend, request, result.seed, result.samples[0].shape[:2])
    maps = [(m, f"unit{u.number}-map") for u, m in zip(request.units, result.maps)]
    return backend.results.save(MULTI, result.seed, _results(info, maps, result.samples))


# ---- settings -> a run -----------------------------------------------------------------------------------------


def _title(app: str) -> str:
    return APPS[app].title if app in APPS else "Multi-ControlNet" if app == MULTI else app


def _check_app(info: ImageInfo, app: str) -> None:
    if info.app != app:
        raise InvalidInput(f"This PNG was made with the {_title(info.app)} page ({info.app}), not {_title(app)}: "
                           f"restore it there.")


def _choices(info: ImageInfo, lora_files: Mapping[str, Path]) -> tuple[Choices, list[str]]:
    """The sampler, Fast and LoRA choices of `info`; LoRAs this server does not offer are left out (noted)."""
    offered = [lora for lora in info.loras if lora.name in lora_files]
    notes = [f"LoRA {lora.name} is not available here and was left out" for lora in info.loras if lora not in offered]
    scale = offered[0].weight if offered else LORA_SCALE.default
    return check_choices(info.sampler, info.fast, [lora.name for lora in offered], scale, info.fast_decode,
                         lora_files), notes


def _weights(unit: ControlNetInfo, offered: tuple[str, ...], where: str) -> str:
    key = weights_key(unit.model)
    if key not in offered:
        raise InvalidInput(f"{where}: the ControlNet {unit.model} is not one offered here "
                           f"({', '.join(weights_name(k) for k in offered)}).")
    return key


@dataclass(frozen=True)
class Restored:
    """A single app's settings from a PNG, checked as a request would be; `notes`: what could not be restored."""

    request: Request
    notes: tuple[str, ...] = ()

    @property
    def lora_names(self) -> list[str]:
        return [Path(path).name for path, _ in self.request.choices.loras]

    @property
    def lora_scale(self) -> float:
        return self.request.choices.loras[0][1] if self.request.choices.loras else LORA_SCALE.default


def restore_app(spec: AppSpec, info: ImageInfo, lora_files: Mapping[str, Path]) -> Restored:
    """The values that make app `spec` run as `info` says; InvalidInput says why they cannot."""
    _check_app(info, spec.name)
    if len(info.controlnets) != 1:
        raise InvalidInput(f"This PNG lists {len(info.controlnets)} ControlNets; a single app uses one.")
    single = (ControlMode.BALANCED.value, ControlMode.GUESS.value, ControlMode.CONDITIONAL.value)
    if info.control_mode not in single:
        raise InvalidInput(f"Control mode {info.control_mode!r} is not available on a single app.")
    unit = info.controlnets[0]
    extras = {p.name for p in spec.primary + spec.extras}
    unknown = sorted(set(unit.params) - extras)
    if unknown:
        raise InvalidInput(f"This PNG has settings the {spec.title} app does not have: {', '.join(unknown)}.")
    choices, notes = _choices(info, lora_files)
    values = {"num_samples": info.num_samples, "image_resolution": info.image_resolution, "strength": unit.weight,
              "guess_mode": info.control_mode == ControlMode.GUESS.value, "ddim_steps": info.steps,
              "scale": info.scale, "seed": info.seed, "eta": info.eta, **unit.params}
    request = validate(spec, values, info.prompt, info.a_prompt, info.n_prompt,
                       _weights(unit, spec.weights, "This PNG"), choices, unit.module if spec.preprocessors else None)
    return Restored(request, tuple(notes))


@dataclass(frozen=True)
class UnitSettings:
    annotator: str
    weights: str
    strength: float
    start: float
    end: float


@dataclass(frozen=True)
class MultiRestored:
    """The multi-condition page's settings from a PNG (units by number, from 1; their images are the user's)."""

    units: dict[int, UnitSettings]
    values: dict[str, Any]
    prompt: str
    a_prompt: str
    n_prompt: str
    mode: str
    choices: Choices
    notes: tuple[str, ...] = ()


def restore_multi(info: ImageInfo, lora_files: Mapping[str, Path]) -> MultiRestored:
    """The multi-condition page's values for `info`, checked; InvalidInput says why they cannot be used."""
    _check_app(info, MULTI)
    units = {}
    for unit in info.controlnets:
        number = unit.unit + 1
        where = f"Unit {number}"
        if not 1 <= number <= MAX_UNITS:
            raise InvalidInput(f"This PNG has a unit {number}; the page has {MAX_UNITS}.")
        if unit.module != NO_ANNOTATOR and unit.module not in ANNOTATOR_APPS:
            raise InvalidInput(f"{where}: the annotator {unit.module!r} is not available here.")
        strength, start, end = (check_param(p, v) for p, v in ((STRENGTH, unit.weight), (START, unit.start),
                                                               (END, unit.end)))
        units[number] = UnitSettings(unit.module, _weights(unit, CONTROLNETS, where), strength, start, end)
    if not units:
        raise InvalidInput("This PNG lists no ControlNet.")
    if info.control_mode not in {m.value for m in ControlMode}:
        raise InvalidInput(f"Control mode {info.control_mode!r} is unknown.")
    choices, notes = _choices(info, lora_files)
    given = {"num_samples": info.num_samples, "image_resolution": info.image_resolution, "ddim_steps": info.steps,
             "scale": info.scale, "seed": info.seed, "eta": info.eta}
    values = {p.name: check_param(p, given[p.name]) for p in with_fast_ranges(COMMON, choices.fast)}
    dropped = [f"unit {n}'s annotator settings ({', '.join(u.params)}) are API-only and were not restored"
               for n, u in ((u.unit + 1, u) for u in info.controlnets) if u.params and u.module != NO_ANNOTATOR
               and dict(u.params) != {p.name: p.default for p in ANNOTATOR_APPS[u.module].extras}]
    return MultiRestored(units, values, check_text("Prompt", info.prompt), check_text("Added Prompt", info.a_prompt),
                         check_text("Negative Prompt", info.n_prompt), info.control_mode, choices,
                         tuple(notes + dropped))
