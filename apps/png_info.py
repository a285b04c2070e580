"""The settings an image was made with, as the `parameters` text chunk of its PNG in the WebUI's format, so
that other tools (the AUTOMATIC1111 WebUI, image browsers, civitai) read them and a page here restores them.

    a house, best quality, extremely detailed
    Negative prompt: longbody, lowres, bad anatomy
    Steps: 20, Sampler: DDIM, CFG scale: 9, Seed: 12345, Size: 512x384, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly,
    Eta DDIM: 0, Image resolution: 512, Control mode: Balanced, ControlNet 0: "Module: canny, Model: control_sd15_canny
    [fef5e48e], Weight: 1, Guidance Start: 0, Guidance End: 1, Low Threshold: 100, High Threshold: 200",
    Added prompt: "best quality, extremely detailed", App: canny

(the last line is one line). The first lines are the text the model was conditioned on, the prompt followed
by ", " and the added prompt, as the WebUI writes the prompt it used; `Added prompt` says which tail was added.
A value holding a comma, a colon or a newline is JSON-quoted, as the WebUI quotes. Each ControlNet is one
`ControlNet N` entry (N: its unit, from 0) in sd-webui-controlnet's form: `Field: value` pairs with its
preprocessor's settings by name (detect resolution as `Processor Res`); the model is named with the first 8
hex digits of its file's SHA-256 in brackets, the base model with the first 10 (the WebUI's `Model hash`).
Random-weight (--tiny) runs name the weights key and no hash.

`parse_parameters(format_parameters(info)) == info` for every `ImageInfo`, whatever its prompts hold.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.PngImagePlugin

from apps.errors import InvalidInput
from cldm.control import ControlMode
from cldm.samplers import SAMPLERS

CHUNK = "parameters"
NEGATIVE = "Negative prompt: "
# The WebUI's own pattern for one `Key: value` pair of the last line (a value is plain up to a comma, or quoted).
PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
NAMED_HASH = re.compile(r"^(.*) \[([0-9a-f]+)\]$")
MODE_LABELS = {ControlMode.BALANCED.value: "Balanced", ControlMode.GUESS.value: "Guess",
               ControlMode.CFG_RESOLUTION_WEIGHTING.value: "CFG resolution weighting"}
PROCESSOR_RES = ("detect_resolution", "Processor Res")  # sd-webui-controlnet's name for the detect resolution
UNIT_FIELDS = ("Module", "Model", "Weight", "Guidance Start", "Guidance End")


class NoSettings(InvalidInput):
    """A PNG without settings written here (no chunk, or another tool's)."""


@dataclass(frozen=True)
class ControlNetInfo:
    """One ControlNet of a generation."""

    unit: int  # 0-based (the multi-condition page's unit number − 1)
    module: str  # the preprocessor: an annotator name, or "none" (the image is the map)
    model: str  # the weights file's name without extension, or the weights key (random weights)
    model_hash: str | None  # the first 8 hex digits of the file's SHA-256
    weight: float  # control strength
    start: float = 0.0
    end: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)  # the preprocessor's settings by name


@dataclass(frozen=True)
class LoraInfo:
    name: str  # as the pages offer it (the file name)
    weight: float
    hash: str | None  # the first 10 hex digits of the file's SHA-256


@dataclass(frozen=True)
class ImageInfo:
    """Everything needed to make an image again (with the same input image)."""

    app: str  # the page: an app name or "multi"
    prompt: str
    a_prompt: str
    n_prompt: str
    steps: int
    sampler: str  # a `cldm.samplers.SAMPLERS` name (written as its label)
    scale: float
    seed: int
    width: int
    height: int
    model: str  # the base model file's name without extension, or "sd15" (random weights)
    model_hash: str | None  # the first 10 hex digits of its SHA-256 (the WebUI's AutoV2 hash)
    image_resolution: int
    eta: float
    control_mode: str  # a ControlMode value
    controlnets: tuple[ControlNetInfo, ...]
    num_samples: int = 1
    batch_pos: int = 0  # which image of the batch this is
    fast: bool = False
    fast_decode: bool = False
    loras: tuple[LoraInfo, ...] = ()


# ---- writing ---------------------------------------------------------------------------------------------------


def quote(value: Any) -> str:
    """A value as the WebUI writes it: JSON-quoted when it holds a comma, colon or newline (and here also when
    it is empty, starts with a quote or has surrounding spaces, so that it reads back exactly)."""
    text = _text(value)
    if any(c in text for c in ",:\n\r") or not text or text[0] == '"' or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        short = format(value, "g")
        return short if float(short) == value else repr(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def _pairs(items: list[tuple[str, Any]]) -> str:
    return ", ".join(f"{key}: {quote(value)}" for key, value in items if value is not None)


def _named(name: str, digest: str | None) -> str:
    return f"{name} [{digest}]" if digest else name


def field_label(name: str) -> str:
    """sd-webui-controlnet's display form of a setting: low_threshold -> Low Threshold."""
    return PROCESSOR_RES[1] if name == PROCESSOR_RES[0] else " ".join(w.capitalize() for w in name.split("_"))


def field_name(label: str) -> str:
    return PROCESSOR_RES[0] if label == PROCESSOR_RES[1] else "_".join(w.lower() for w in label.split(" "))


def _unit_text(unit: ControlNetInfo) -> str:
    items = [("Module", unit.module), ("Model", _named(unit.model, unit.model_hash)), ("Weight", unit.weight),
             ("Guidance Start", unit.start), ("Guidance End", unit.end)]
    return _pairs(items + [(field_label(k), v) for k, v in unit.params.items()])


def _lora_text(lora: LoraInfo) -> str:
    return _pairs([("Name", lora.name), ("Weight", lora.weight), ("Hash", lora.hash)])


def format_parameters(info: ImageInfo) -> str:
    """The `parameters` text of `info`."""
    text = _format(info, exact_prompt=False)
    if parse_parameters(text) != info:  # a prompt that holds "\nNegative prompt: " is also written whole
        text = _format(info, exact_prompt=True)
    return text


def _format(info: ImageInfo, exact_prompt: bool) -> str:
    items: list[tuple[str, Any]] = [
        ("Steps", info.steps), ("Sampler", SAMPLERS[info.sampler].label if info.sampler in SAMPLERS else info.sampler),
        ("CFG scale", info.scale), ("Seed", info.seed), ("Size", f"{info.width}x{info.height}"),
        ("Model hash", info.model_hash), ("Model", info.model),
        ("Batch size", info.num_samples if info.num_samples > 1 else None),
        ("Batch pos", info.batch_pos if info.num_samples > 1 else None),
        ("Eta DDIM", info.eta), ("Image resolution", info.image_resolution),
        ("Control mode", MODE_LABELS.get(info.control_mode, info.control_mode)),
        *((f"ControlNet {u.unit}", _unit_text(u)) for u in info.controlnets),
        ("Added prompt", info.a_prompt), ("Fast", True if info.fast else None),
        ("Fast decode", True if info.fast_decode else None),
        *((f"Lora {k}", _lora_text(lora)) for k, lora in enumerate(info.loras)),
        ("Prompt", info.prompt if exact_prompt else None), ("App", info.app),
    ]
    body = info.prompt + ", " + info.a_prompt  # what the pipeline conditions on
    if info.n_prompt:
        body += "\n" + NEGATIVE + info.n_prompt
    return body + "\n" + _pairs(items)


# ---- reading ---------------------------------------------------------------------------------------------------


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def split_pairs(line: str) -> dict[str, str]:
    """`Key: value, …` (values unquoted) as the WebUI reads it."""
    return {key: _unquote(value) for key, value in PAIR.findall(line)}


def _scalar(text: str) -> bool | int | float | str:
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _name_and_hash(text: str) -> tuple[str, str | None]:
    match = NAMED_HASH.match(text)
    return (match.group(1), match.group(2)) if match else (text, None)


def _unit(index: int, text: str) -> ControlNetInfo:
    pairs = split_pairs(text)
    model, digest = _name_and_hash(pairs.get("Model", ""))
    return ControlNetInfo(
        unit=index, module=pairs.get("Module", ""), model=model, model_hash=digest,
        weight=float(pairs.get("Weight", 1)), start=float(pairs.get("Guidance Start", 0)),
        end=float(pairs.get("Guidance End", 1)),
        params={field_name(k): _scalar(v) for k, v in pairs.items() if k not in UNIT_FIELDS},
    )


def _lora(text: str) -> LoraInfo:
    pairs = split_pairs(text)
    return LoraInfo(pairs.get("Name", ""), float(pairs.get("Weight", 1)), pairs.get("Hash"))


def parse_parameters(text: str) -> ImageInfo:
    """The settings in a `parameters` text written by `format_parameters`; NoSettings when it was not."""
    body, _, last = text.rpartition("\n")
    pairs = split_pairs(last)
    if "App" not in pairs or "Steps" not in pairs:
        raise NoSettings("This PNG's settings were not written by this suite (its parameters have no App entry), "
                         "so they cannot be restored here.")
    a_prompt = pairs.get("Added prompt", "")
    if "Prompt" in pairs:
        prompt = pairs["Prompt"]
        rest = body[len(prompt + ", " + a_prompt):]
        n_prompt = rest[len("\n" + NEGATIVE):] if rest.startswith("\n" + NEGATIVE) else ""
    else:
        conditioned, found, n_prompt = body.partition("\n" + NEGATIVE)
        prompt = conditioned.removesuffix(", " + a_prompt)
    try:
        width, height = (int(v) for v in pairs["Size"].split("x"))
        sampler = next((s.name for s in SAMPLERS.values() if s.label == pairs["Sampler"]), pairs["Sampler"])
        mode = next((m for m, label in MODE_LABELS.items() if label == pairs.get("Control mode")),
                    pairs.get("Control mode", ControlMode.BALANCED.value))
        units = tuple(_unit(int(k.split()[1]), v) for k, v in pairs.items() if re.fullmatch(r"ControlNet \d+", k))
        loras = tuple(_lora(v) for k, v in pairs.items() if re.fullmatch(r"Lora \d+", k))
        return ImageInfo(
            app=pairs["App"], prompt=prompt, a_prompt=a_prompt, n_prompt=n_prompt, steps=int(pairs["Steps"]),
            sampler=sampler, scale=float(pairs["CFG scale"]), seed=int(pairs["Seed"]), width=width, height=height,
            model=pairs.get("Model", ""), model_hash=pairs.get("Model hash"),
            image_resolution=int(pairs.get("Image resolution", max(width, height))), eta=float(pairs.get("Eta DDIM", 0)),
            control_mode=mode, controlnets=units, num_samples=int(pairs.get("Batch size", 1)),
            batch_pos=int(pairs.get("Batch pos", 0)), fast=pairs.get("Fast") == "True",
            fast_decode=pairs.get("Fast decode") == "True", loras=loras,
        )
    except (KeyError, ValueError, IndexError) as err:
        raise NoSettings(f"This PNG's settings could not be read ({type(err).__name__}: {err}).") from None


# ---- PNG files -------------------------------------------------------------------------------------------------


def save_png(image: np.ndarray, path: str | Path, info: ImageInfo | None) -> Path:
    """`image` (H×W×3 uint8) as a PNG with `info` in its `parameters` chunk (tEXt, or iTXt when the text is not
    Latin-1)."""
    chunks = PIL.PngImagePlugin.PngInfo()
    if info is not None:
        chunks.add_text(CHUNK, format_parameters(info))
    PIL.Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG", pnginfo=chunks)
    return Path(path)


def read_parameters(path: str | Path, name: str | None = None) -> str:
    """The `parameters` text of a PNG; NoSettings when the file is not a PNG or has none."""
    name = name or Path(path).name
    try:
        with PIL.Image.open(path) as im:
            text = im.text.get(CHUNK) if im.format == "PNG" else None
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError):
        raise NoSettings(f"{name} is not a readable PNG.") from None
    if text is None:
        raise NoSettings(f"{name} carries no settings (no 'parameters' text chunk): only PNGs made by this suite "
                         "(or the WebUI) have them.")
    return text


def read_png_info(path: str | Path, name: str | None = None) -> ImageInfo:
    return parse_parameters(read_parameters(path, name))
