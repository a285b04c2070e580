"""Reading weight files into flat dicts of tensors, without unpickling anything but tensors.

`.safetensors` files are memory-mapped by safetensors; `.pth`/`.ckpt`/`.pt`/`.bin` go through
`torch.load(weights_only=True)`, memory-mapped when the file is a zip archive (every torch ≥ 1.6 file).
Every failure is a `CheckpointError` naming the file.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Union

import torch
from safetensors.torch import load_file
from torch import Tensor

PathLike = Union[str, Path]
TORCH_SUFFIXES = (".pth", ".ckpt", ".pt", ".bin")


class CheckpointError(ValueError):
    """A weight file that cannot be read, or that does not fit the model it is loaded into."""

    def __init__(self, path: PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


def load_state_dict(path: PathLike, location: str = "cpu") -> dict[str, Tensor]:
    """Flat {name: tensor} of a weight file; a `state_dict` wrapper is unwrapped and non-tensor entries dropped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        obj = _read(path, lambda: load_file(path, device=location))
    elif suffix in TORCH_SUFFIXES:
        mmap = zipfile.is_zipfile(path)
        obj = _read(path, lambda: torch.load(path, map_location=location, weights_only=True, mmap=mmap))
    else:
        raise CheckpointError(path, f"unsupported file type {suffix!r} (expected .safetensors, {', '.join(TORCH_SUFFIXES)})")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"not a checkpoint: holds a {type(obj).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(path, "not a checkpoint: it holds no tensors")
    return tensors


def _read(path: Path, reader: Any) -> Any:
    try:
        return reader()
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(path, f"holds pickled Python objects ({found.group(1)}); refusing to unpickle them") from e
        raise CheckpointError(path, "unreadable: not a checkpoint, or corrupt or truncated (bad pickle data)") from e
    except Exception as e:  # torch and safetensors raise many types (RuntimeError, SafetensorError, EOFError, …)
        raise CheckpointError(path, f"unreadable: not a checkpoint, or corrupt or truncated ({type(e).__name__}: {e})") from e
