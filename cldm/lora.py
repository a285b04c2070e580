"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for SD 1.5, merged into the weights.

    lora = read_lora("style.safetensors", model)     # factors resolved to this model's module names
    merged = merge_lora(model, lora, scale=0.8)       # W += scale * alpha/rank * up @ down, in place
    ...                                               # sample as usual
    merged.unmerge()                                  # the touched weights get their original tensors back

A LoRA adds a low-rank update to a Linear or Conv2d weight: W' = W + scale * (alpha / rank) * up @ down, with
down (rank, in[, kh, kw]) and up (out, rank[, 1, 1]); a conv's update is the matrix product of the flattened
factors, reshaped to the kernel (a 3x3 `down` with a 1x1 `up` is kohya's "LoCon"). Merging costs nothing per
step; `unmerge` puts the original tensors back, so the base is restored bit for bit, whatever rounding the merge
did: copies kept at merge time (on the CPU), or, with `reload`, the tensors read again from the base's file,
which spares a second copy of the UNet in memory (an LCM-LoRA touches nearly all of it).

File formats read (UNet and, when present, CLIP text encoder):
1. kohya / A1111 with the original module names: `lora_unet_input_blocks_4_1_proj_in.lora_down.weight`,
   `.lora_up.weight`, `.alpha`; `lora_te_text_model_encoder_layers_0_self_attn_q_proj.*`;
2. kohya with diffusers module names (kohya's SD 1.x trainer, LCM-LoRA):
   `lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight`, same suffixes;
3. diffusers / PEFT: `unet.down_blocks.0.attentions.0.proj_in.lora_A.weight` / `.lora_B.weight`,
   `text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight`. Alpha comes from the safetensors
   metadata `lora_adapter_metadata` (diffusers writes `unet.lora_alpha`, `unet.alpha_pattern`, `unet.use_rslora`,
   the same under `text_encoder.`); without it alpha = rank, i.e. W' = W + scale * B @ A.
A missing `.alpha` means alpha = rank. The underscore-joined kohya names are ambiguous (`proj_in` or `proj.in`?),
so they are looked up in a table of the names every Linear/Conv2d of this model has in each layout, never
turned back into dotted paths by string replacement. Any key that names no module, and any LoRA variant that is
not a plain low-rank pair (LoHa, LoKr, DoRA, ...), is a `CheckpointError` naming the file.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from cldm.checkpoint import CheckpointError, PathLike, load_state_dict
from cldm.control_ldm import UNET_PREFIX as UNET
from cldm.diffusers_names import unet_module_names

TEXT = "cond_stage_model.transformer."
PEFT_METADATA = "lora_adapter_metadata"
# Key suffix -> which part of the pair it holds.
PARTS = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha",
         ".lora_A.weight": "down", ".lora_B.weight": "up"}
# Key fragments of LoRA variants whose update is not `up @ down`; they are refused, not half-applied.
VARIANTS = {"hada_": "LoHa", "lokr_": "LoKr", "dora_scale": "DoRA", "lora_magnitude_vector": "DoRA",
            "lora_mid": "LoCon with a CP-decomposed middle factor", "lora_B.bias": "LoRA with biases",
            ".diff": "full weight differences", ".lora.down.": "the old diffusers attention-processor layout",
            "_lora.down.": "the old diffusers attention-processor layout"}
EXAMPLES = 3


@dataclass(frozen=True)
class LoraPair:
    """One module's factors, as stored in the file (CPU, file dtype)."""
    down: Tensor  # (rank, in) or (rank, in, kh, kw)
    up: Tensor  # (out, rank) or (out, rank, 1, 1)
    factor: float  # alpha / rank (alpha / sqrt(rank) for rsLoRA): the update is scale * factor * up @ down

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self, weight: Tensor, scale: float) -> Tensor:
        """scale * factor * up @ down, float32 on the weight's device, in the weight's shape."""
        up = self.up.to(weight.device, torch.float32).flatten(1)
        down = self.down.to(weight.device, torch.float32).flatten(1)
        return ((up @ down) * (scale * self.factor)).reshape(weight.shape)


@dataclass(frozen=True)
class Lora:
    """A LoRA file resolved against a model: module path in the model -> factors."""
    path: Path
    pairs: dict[str, LoraPair]

    @property
    def has_text_encoder(self) -> bool:
        return any(p.startswith(TEXT) for p in self.pairs)


def read_lora(path: PathLike, model: nn.Module) -> Lora:
    """Read a LoRA file (.safetensors; .pt/.pth/.bin/.ckpt via torch.load(weights_only=True)) for `model`, a
    ControlLDM. Every key must belong to a module of its UNet or text encoder, with fitting shapes."""
    path = Path(path)
    state = load_state_dict(path)
    for fragment, variant in VARIANTS.items():
        found = [k for k in state if fragment in k]
        if found:
            raise CheckpointError(path, f"is a {variant} file ({found[0]}); only plain LoRA (up @ down) is supported")
    names = target_names(model)
    metadata = _peft_metadata(path)
    parts: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        suffix = next((s for s in PARTS if key.endswith(s)), None)
        name = key[: -len(suffix)] if suffix else None
        if name not in names:
            unknown.append(key)
            continue
        parts.setdefault(name, {})[PARTS[suffix]] = tensor
    if unknown:
        raise CheckpointError(path, "is not an SD 1.5 LoRA for this model: "
                              f"{_listing(unknown)} name no UNet or text-encoder module{_family_hint(unknown)}")
    modules = dict(model.named_modules())
    pairs: dict[str, LoraPair] = {}
    for name, found in parts.items():
        target = names[name]
        if "down" not in found or "up" not in found:
            raise CheckpointError(path, f"{name}: has {sorted(found)} but a LoRA needs both factors (down and up)")
        down, up = found["down"], found["up"]
        problem = _shape_problem(down, up, modules[target].weight)
        if problem:
            raise CheckpointError(path, f"{name}: {problem}")
        if target in pairs:
            raise CheckpointError(path, f"{name}: a second set of factors for {target}")
        pairs[target] = LoraPair(down, up, _factor(path, name, found.get("alpha"), down.shape[0], metadata))
    return Lora(path, pairs)


def target_names(model: nn.Module) -> dict[str, str]:
    """Every name a LoRA file may give a Linear/Conv2d of the UNet or text encoder -> its path in `model`.

    UNet modules are listed under their original and their diffusers paths (underscore-joined after
    `lora_unet_`, dotted after `unet.`); text-encoder modules under their transformers path (`lora_te_` /
    `text_encoder.`, the latter also without `text_model.`, as the flattened CLIPTextModel of transformers >= 5.6
    names them)."""
    names: dict[str, str] = {}
    unet = model.model.diffusion_model
    diffusers = {original: d for d, original in unet_module_names(unet.config).items()}
    for path, module in unet.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            target = UNET + path
            _add(names, "lora_unet_" + path.replace(".", "_"), target)
            _add(names, "lora_unet_" + diffusers[path].replace(".", "_"), target)
            _add(names, "unet." + diffusers[path], target)
    for path, module in model.cond_stage_model.transformer.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            target = TEXT + path
            _add(names, "lora_te_" + path.replace(".", "_"), target)
            _add(names, "text_encoder." + path, target)
            _add(names, "text_encoder." + path.removeprefix("text_model."), target)
    return names


def _add(names: dict[str, str], name: str, target: str) -> None:
    if names.setdefault(name, target) != target:
        raise RuntimeError(f"LoRA name {name} would fit both {names[name]} and {target}")


def _shape_problem(down: Tensor, up: Tensor, weight: Tensor) -> str:
    """Why `up @ down` cannot update `weight` ("" when it can). A 1x1 conv also takes linear-shaped factors."""
    if down.ndim not in (2, 4) or up.ndim != down.ndim:
        return f"factors of shapes {list(down.shape)} and {list(up.shape)} are not a linear or conv LoRA pair"
    rank = down.shape[0]
    shapes = f"down {list(down.shape)}, up {list(up.shape)}, weight {list(weight.shape)}"
    if rank < 1 or up.shape[0] < 1:
        return f"empty factors: {shapes}"
    if up.shape[1] != rank or up[0, 0].numel() != 1:
        return f"up must be (out, rank[, 1, 1]) with rank {rank}: {shapes}"
    if up.shape[0] != weight.shape[0] or down[0].numel() != weight[0].numel():
        return f"factors do not fit the weight: {shapes}"
    if down.ndim == 4 and weight.ndim == 4 and down.shape[1:] != weight.shape[1:]:
        return f"kernel of down does not match the conv: {shapes}"
    return ""


def _factor(path: Path, name: str, alpha: Tensor | None, rank: int, metadata: dict) -> float:
    if alpha is not None:
        if alpha.numel() != 1:
            raise CheckpointError(path, f"{name}.alpha must be a scalar, got shape {list(alpha.shape)}")
        return float(alpha) / rank
    component, _, module = name.partition(".")  # PEFT names: unet.<module> / text_encoder.<module>
    config = metadata.get(component, {}) if module else {}
    value = config.get("lora_alpha")
    if value is None:
        return 1.0
    for pattern, pattern_alpha in (config.get("alpha_pattern") or {}).items():
        # PEFT's rule: the pattern matches the module path or a dotted suffix of it.
        if re.match(rf"(.*\.)?({pattern})$", module):
            value = pattern_alpha
            break
    return float(value) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _peft_metadata(path: Path) -> dict[str, dict]:
    """{"unet": {...}, "text_encoder": {...}}: the LoraConfig fields diffusers stores in the safetensors header."""
    if path.suffix.lower() != ".safetensors":
        return {}
    with safe_open(path, "pt") as f:
        raw = (f.metadata() or {}).get(PEFT_METADATA)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"unreadable {PEFT_METADATA} metadata ({e})") from e
    config: dict[str, dict] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        config.setdefault(component, {})[field] = value
    for component, fields in config.items():
        if fields.get("use_dora"):
            raise CheckpointError(path, f"is a DoRA file ({component}.use_dora); only plain LoRA is supported")
    return config


def _listing(keys: list[str]) -> str:
    more = f", … ({len(keys) - EXAMPLES} more)" if len(keys) > EXAMPLES else ""
    return f"{len(keys)} keys (e.g. {', '.join(keys[:EXAMPLES])}{more})"


def _family_hint(keys: list[str]) -> str:
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return "; two text encoders: this looks like an SDXL LoRA"
    return ""


# Weight keys (`<module path>.weight`) -> a mapping that holds their original tensors, e.g. the base file's state
# dict, memory-mapped.
Reload = Callable[[Sequence[str]], Mapping[str, Tensor]]


class MergedLora:
    """LoRA updates merged into a model's weights; `unmerge()` restores the original tensors exactly.

    Merges on overlapping weights must be undone in reverse order. `unmerge` checks that every weight it touched
    still holds what the merge wrote (same Parameter, same bits) and raises otherwise, rather than silently
    undoing a later merge or a weight reload. Reloaded originals are checked against the checksums of the weights
    they replace; one that differs (the file changed meanwhile) is an error, after which the model holds a mix."""

    def __init__(self, model: nn.Module, originals: dict[str, Tensor], parameters: dict[str, nn.Parameter],
                 checksums: dict[str, int], reload: Reload | None = None, original_checksums: dict[str, int] | None = None):
        self._model = model
        self._originals = originals
        self._parameters = parameters
        self._checksums = checksums
        self._reload = reload
        self._original_checksums = original_checksums or {}

    @property
    def merged(self) -> bool:
        return bool(self._parameters)

    @property
    def modules(self) -> list[str]:
        return list(self._parameters)

    def unmerge(self) -> None:
        if not self._parameters:
            raise RuntimeError("this LoRA merge was already undone")
        modules = dict(self._model.named_modules())
        changed = [path for path, parameter in self._parameters.items()
                   if getattr(modules.get(path), "weight", None) is not parameter
                   or _checksum(parameter) != self._checksums[path]]
        if changed:
            raise RuntimeError(f"{len(changed)} weights changed since this LoRA was merged (e.g. {changed[0]}): "
                               "undo later merges first (reverse order), and do not reload weights in between")
        originals = self._originals
        if self._reload is not None:
            reloaded = self._reload([f"{path}.weight" for path in self._parameters])
            originals = {path: reloaded[f"{path}.weight"] for path in self._parameters}
        with torch.no_grad():
            for path, original in originals.items():
                parameter = self._parameters[path]
                if self._reload is not None:
                    original = original.to(parameter.device, parameter.dtype)
                    if _checksum(original) != self._original_checksums[path]:
                        raise RuntimeError(f"the base weights reloaded for {path} differ from those the LoRA was "
                                           "merged into (was the base file replaced?); reload the model")
                parameter.copy_(original)
        self._originals, self._parameters, self._checksums = {}, {}, {}


def merge_lora(model: nn.Module, lora: Lora, scale: float = 1.0, reload: Reload | None = None) -> MergedLora:
    """Merge one LoRA at `scale` into `model` (in place); see `merge_loras`."""
    return merge_loras(model, [(lora, scale)], reload)


def merge_loras(model: nn.Module, loras: Sequence[tuple[Lora, float]], reload: Reload | None = None) -> MergedLora:
    """Merge several LoRAs, each at its scale, into `model` in place: W = W + sum(scale * factor * up @ down).

    The sum is formed in float32 on the weight's device and rounded once to the weight's dtype. The original
    weight tensors are copied to the CPU first, for `MergedLora.unmerge`; with `reload` only their checksums are
    kept and `unmerge` reads them again through `reload`."""
    modules = dict(model.named_modules())
    updates: dict[str, list[tuple[LoraPair, float]]] = {}
    for lora, scale in loras:
        for path, pair in lora.pairs.items():
            module = modules.get(path)
            weight = getattr(module, "weight", None)
            if weight is None or _shape_problem(pair.down, pair.up, weight):
                raise ValueError(f"{lora.path}: LoRA for {path} does not fit this model (read it with this model)")
            updates.setdefault(path, []).append((pair, float(scale)))
    originals, original_checksums, parameters, checksums = {}, {}, {}, {}
    with torch.no_grad():
        for path, pairs in updates.items():
            weight = modules[path].weight
            if reload is None:
                originals[path] = weight.detach().to("cpu", copy=True)
            else:
                original_checksums[path] = _checksum(weight)
            total = weight.float()
            for pair, scale in pairs:
                total = total + pair.delta(weight, scale)
            weight.copy_(total.to(weight.dtype))
            parameters[path], checksums[path] = weight, _checksum(weight)
    return MergedLora(model, originals, parameters, checksums, reload, original_checksums)


def random_lora(model: nn.Module, seed: int, name: str = "random", rank: int = 4) -> Lora:
    """A seeded random LoRA on the attention projections (q, k, v) of `model`'s UNet: what the tiny test model
    uses where a real LoRA file cannot fit it. Its updates are of the size of the weights' own."""
    generator = torch.Generator().manual_seed(seed)
    pairs = {}
    for path, module in model.named_modules():
        if path.startswith(UNET) and path.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v"):
            down = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
            up = torch.randn(module.out_features, rank, generator=generator) / rank**0.5
            pairs[path] = LoraPair(down, up, 1.0)
    return Lora(Path(name), pairs)


def _checksum(tensor: Tensor) -> int:
    """Sum of the raw bit patterns: changes when any element changes (barring a collision in the sum)."""
    bits = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return int(tensor.detach().view(bits).sum(dtype=torch.int64))
