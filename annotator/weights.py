"""Loading annotator weight files safely: plain tensor dicts only, keys checked, any float dtype."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from weights.files import WeightFiles


class WeightFileError(RuntimeError):
    """A weight file exists but does not hold what the network expects; the message names the file."""


def read_state_dict(path: str | Path, wrapper: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt file, read with weights_only=True (never unpickles arbitrary objects).

    `wrapper`: the entry that holds the state dict in files that wrap it (e.g. "state_dict", "model")."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightFileError(f"cannot read weight file {path}: {type(err).__name__}: {err}") from err
    if wrapper is not None:
        if not isinstance(state, dict) or not isinstance(state.get(wrapper), dict):
            raise WeightFileError(f"weight file {path} has no '{wrapper}' entry holding the weights")
        state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightFileError(f"weight file {path} is not a plain dict of tensors")
    return state


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> torch.nn.Module:
    """Copy `state` (read from `path`) into `module` after checking names and shapes (fp16 lands in fp32)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightFileError(
            f"weight file {path} does not match {type(module).__name__}: "
            f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}"
        )
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise WeightFileError(
            f"weight file {path}: {len(wrong)} tensor(s) have the wrong shape, e.g. {k}: "
            f"{tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} expected"
        )
    module.load_state_dict(state, strict=True)
    return module


def load_into(module: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Copy the file's tensors into `module` (a plain state dict with the module's own key names)."""
    return load_state(module, read_state_dict(path), path)


def build_network(make: Callable[[], torch.nn.Module], weight_key: str, device: str, random_init: bool,
                  files: WeightFiles | None = None, load: Callable[[torch.nn.Module, Path], torch.nn.Module] = load_into,
                  skip_init: bool = False) -> torch.nn.Module:
    """`make()` in eval mode on `device`, with the weights of `weight_key` or, if random_init, seeded random ones.

    `files` finds the weight file (default: `WeightFiles()`, the standard lookup); `load(net, path)` reads it into
    the network (default: a plain state dict with the network's own key names). `skip_init`: build the network
    uninitialised, for loaders that fill every tensor from the file (saves the random init of a large network)."""
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random network every time (tests, --tiny demos)
            net = make()
    else:
        path = (files or WeightFiles()).resolve(weight_key)
        if skip_init:
            with torch.device("meta"):
                net = make()
            net = net.to_empty(device="cpu")
        else:
            net = make()
        net = load(net, path)
    return net.float().eval().to(device)
