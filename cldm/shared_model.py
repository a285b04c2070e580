"""The shared model: one SD 1.5 base per process, ControlNet weights swapped in per app.

    shared = SharedModel(files=WeightFiles(search_dirs=["models"]))   # device "auto": cuda, then mps, then cpu
    with shared.activate("cn10_canny") as model:           # base loaded once; control weights swapped in
        ...                                                # the model is locked while the block runs

The base is the default SD 1.5 file, or `base=` (and `vae=`) any form `cldm.bases.load_sd_base` reads (a
single file, a diffusers folder or repo id); `status()["base"]` names it. Control weights are read with
`cldm.model.load_control` (`control_model.*` of a full 1.0 file, a control-only or fp16 file, a diffusers
ControlNet); a file refused there leaves the current weights in place. A small LRU cache keeps the control
state dicts of the last few files (on the CPU), so switching between apps costs a tensor copy, not a file read.
`status()` reports what was loaded how often (the pages show it, the tests assert on it).

LoRAs (`activate(key, loras=[(name, scale), ...])`, a name being a weights key such as `lcm_lora` or a file
path) are merged into the base's UNet and text encoder (`cldm.lora`); a request with another set unmerges the
previous one first, which restores the base bit for bit. Parsed LoRA files are cached (a few, on the CPU).

`tiny=True`: the tiny model of `models/cldm_tiny.yaml` with seeded random weights (the same every run) and
random control weights per key (seeded by the key; an fp16 copy's key by its original's, so both hold the
same weights); every weight is random and non-zero, the zero
convolutions included, so control changes the output as real weights do. LoRAs named by a weights key are
seeded random ones (`cldm.lora.random_lora`). No file is read.
"""
from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from cldm.lora import Lora, MergedLora, merge_loras, random_lora, read_lora
from cldm.bases import describe_request, read_sd_base
from cldm.checkpoint import CheckpointError
from cldm.config import load_config
from cldm.model import create_model, load_control, load_parts
from cldm.preview import load_taesd
from ldm.taesd import TAESD
from weights.files import WeightFiles
from weights.table import WEIGHTS, same_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "models" / "cldm_v15.yaml"
TINY_CONFIG = REPO_ROOT / "models" / "cldm_tiny.yaml"
TINY_SEED = 0
LORA_CACHE = 4  # parsed LoRA files kept (an SD 1.5 LoRA is 10–200 MB)

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def pick_device(device: str = "auto") -> torch.device:
    """"auto": cuda, then mps, then cpu; otherwise the named device (checked to be usable)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available")
    if chosen.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} was asked for but MPS is not available")
    return chosen


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None: float32 (the original's precision; half precision is opt-in). "auto": float16 on CUDA, bfloat16 on
    a CPU that computes it natively (about half the time of float32 there), float32 elsewhere."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32
    try:
        chosen = DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r} (use {', '.join(sorted(set(DTYPES)))})") from None
    if chosen is torch.float16 and device.type == "cpu":
        raise ValueError("float16 is not supported on the CPU; use float32 or bfloat16")
    return chosen


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Seeded random values for every parameter of `module`, none zero, activations kept O(1): weights of
    convolutions and linear layers ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.01), biases ~ N(0, 0.01)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.ndim >= 2:
                value = noise / (p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            else:
                value = 0.1 * noise
            p.copy_(value)
    return module


class SharedModel:
    def __init__(self, files: WeightFiles | None = None, device: str = "auto", dtype: str | torch.dtype | None = None,
                 low_memory: bool = False, tiny: bool = False, cache_size: int | None = None,
                 config: str | Path | None = None, base: str | Path | None = None, vae: str | Path | None = None):
        if tiny and (base is not None or vae is not None):
            raise ValueError("a base or VAE file needs real weights; tiny mode uses random ones")
        self.config = Path(config) if config else (TINY_CONFIG if tiny else CONFIG)
        self.base, self.vae = base, vae  # see cldm.bases: a file, a diffusers folder or repo id; None: SD 1.5
        self.base_name = "tiny random model" if tiny else describe_request(base, vae)
        self.files = files or WeightFiles()
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.low_memory = low_memory
        self.tiny = tiny
        # Each cached entry of the real model is a 1.45 GB ControlNet (fp32); low-memory mode keeps none.
        self.cache_size = cache_size if cache_size is not None else (0 if low_memory else 2)
        self.base_loads = 0
        self.control_loads: dict[str, int] = {}  # key -> times its weights were read (cache misses)
        self.control_swaps = 0  # times the active control weights changed
        self.active: str | None = None
        self.active_loras: tuple[tuple[str, float], ...] = ()
        self._merged: MergedLora | None = None
        self._loras: OrderedDict[str, Lora] = OrderedDict()
        self._model: torch.nn.Module | None = None
        self._taesd: TAESD | None = None
        self._cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.RLock()

    # ---- the model ---------------------------------------------------------------------------------------

    @contextmanager
    def activate(self, key: str, loras: Sequence[tuple[str, float]] = ()) -> Iterator[torch.nn.Module]:
        """The model with the control weights `key` (a `weights.WEIGHTS` key) in place and `loras` merged
        ((name, scale) pairs; a name is a weights key or a file path), held exclusively."""
        if key not in WEIGHTS:
            raise KeyError(f"unknown weights {key!r}")
        with self._lock:
            model = self._base()
            if self.active != key:
                self._swap(model, key)
            model = self._set_loras(model, key, tuple((str(name), float(scale)) for name, scale in loras if scale))
            model.control_model.global_average_pooling = WEIGHTS[key].global_average_pooling
            yield model

    def _set_loras(self, model: torch.nn.Module, key: str, wanted: tuple[tuple[str, float], ...]) -> torch.nn.Module:
        """Merge `wanted` into `model` (after undoing the current set); the model to use afterwards."""
        if wanted == self.active_loras:
            return model
        if self._merged is not None:
            merged, self._merged, self.active_loras = self._merged, None, ()
            try:
                merged.unmerge()
            except (RuntimeError, CheckpointError):  # the base file changed on disk since: load it afresh
                self._model = None
                model = self._base()
                self._swap(model, key)
        if wanted:
            # The real base's originals are read again from its file on unmerge rather than kept as a copy.
            reload = None if self.tiny else self._base_weights
            self._merged = merge_loras(model, [(self._lora(model, name), scale) for name, scale in wanted], reload)
            self.active_loras = wanted
        return model

    def _base_weights(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The base's weights as its files hold them (memory-mapped where the format allows)."""
        parts, _ = read_sd_base(self.files, load_config(self.config), self.base, self.vae)
        return {k: v for _, state in parts.values() for k, v in state.items()}

    def taesd(self) -> TAESD:
        """The tiny autoencoder for previews (weights "taesd"; seeded random ones in tiny mode), loaded once."""
        if self._taesd is None:
            if self.tiny:
                taesd = randomize_(TAESD(), TINY_SEED).eval().requires_grad_(False)
            else:
                taesd = load_taesd(self.files.resolve("taesd"))
            self._taesd = taesd.to(device=self.device, dtype=self.dtype)
        return self._taesd

    def _lora(self, model: torch.nn.Module, name: str) -> Lora:
        lora = self._loras.get(name)
        if lora is None:
            if self.tiny and name in WEIGHTS:
                lora = random_lora(model, zlib.crc32(name.encode()), name)
            else:
                lora = read_lora(self.files.resolve(name) if name in WEIGHTS else Path(name), model)
            self._loras[name] = lora
            while len(self._loras) > LORA_CACHE:
                self._loras.popitem(last=False)
        self._loras.move_to_end(name)
        return lora

    def _base(self) -> torch.nn.Module:
        if self._model is None:
            if self.tiny:
                model = randomize_(create_model(self.config, init_weights=False), TINY_SEED)
            else:
                # Read and checked before the model is built: a missing or wrong file fails fast.
                parts, name = read_sd_base(self.files, load_config(self.config), self.base, self.vae)
                model = create_model(self.config, dtype=self.dtype, init_weights=False)
                load_parts(model, parts)
                self.base_name = name
            model.low_memory = self.low_memory
            self._model = self._place(model).eval()
            self.base_loads += 1
            self.active = None
        return self._model

    def _place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move to the device; in low-memory mode only the schedule buffers go there at first and
        `low_vram_shift` moves the working modules in and out (so the whole model is never on the GPU)."""
        for part in model.children():  # the schedule buffers (top level) stay float32
            part.to(dtype=self.dtype)
        if not self.low_memory or self.device.type == "cpu":
            return model.to(self.device)
        for name, buffer in list(model.named_buffers(recurse=False)):
            model.register_buffer(name, buffer.to(self.device))
        model.low_vram_shift(is_diffusing=False)
        return model

    def _swap(self, model: torch.nn.Module, key: str) -> None:
        state = self._cache.get(key)
        if state is not None:
            self._cache.move_to_end(key)
            model.control_model.load_state_dict(state)
        else:
            if self.tiny:
                model.control_model.load_state_dict(self._tiny_control(key))
            else:
                path = self.files.resolve(key)
                # A file that cannot be read or does not fit is refused before any weight is copied: the
                # previous weights stay in place and active; only a failure while copying loses them.
                previous, self.active = self.active, None
                try:
                    load_control(model, path)
                except CheckpointError:
                    self.active = previous
                    raise
            self.control_loads[key] = self.control_loads.get(key, 0) + 1
            if self.cache_size > 0:
                self._cache[key] = {k: v.detach().to("cpu", copy=True) for k, v in model.control_model.state_dict().items()}
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        self.active = key
        self.control_swaps += 1

    def _tiny_control(self, key: str) -> dict[str, torch.Tensor]:
        """Random control weights for `key`, the same every run (seeded by the key naming its weights: a smaller
        copy of a file gets that file's weights)."""
        control = create_model(self.config, init_weights=False).control_model
        return randomize_(control, zlib.crc32(same_weights(key).encode())).state_dict()

    # ---- state -------------------------------------------------------------------------------------------------

    def status(self) -> dict:
        return {
            "tiny": self.tiny,
            "base": self.base_name,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "base_loaded": self._model is not None,
            "base_loads": self.base_loads,
            "control_loads": dict(self.control_loads),
            "control_swaps": self.control_swaps,
            "active_control": self.active,
            "cached_controls": list(self._cache),
            "loras": [f"{name} ×{scale:g}" for name, scale in self.active_loras],
        }
