"""Reading weight files into flat dicts of tensors, without unpickling anything but tensors.

What a file is follows from its first bytes, not its name: a zip archive is a PyTorch file (every torch ≥ 1.6
file), read with `torch.load(weights_only=True)` memory-mapped; a pickle stream is a legacy PyTorch file, read
the same way without the map; anything else with the `.safetensors` suffix, or whose first bytes look like a
safetensors header, is a safetensors file, memory-mapped by safetensors. Before safetensors reads one, its header
is checked against the file (bounded reads; no size the header declares is allocated): a truncated or corrupt file
is reported at once, with which tensor lies outside the file.

Every failure is a `CheckpointError` naming the file; for a copy in the Hugging Face cache the message also
names the file to delete so that the next run downloads it again.
"""
from __future__ import annotations

import json
import math
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, Union

import torch
from safetensors.torch import load_file
from torch import Tensor

PathLike = Union[str, Path]
SUFFIXES = (".safetensors", ".pth", ".ckpt", ".pt", ".bin")
TORCH_SUFFIXES = SUFFIXES[1:]
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}
ZIP_MAGIC = b"PK\x03\x04"
LOCAL_HEADER = 30  # bytes of a zip local file header before its file name
PICKLE_PROTOCOLS = range(2, 6)
LEGACY_PICKLES = 4
STORAGE_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                 "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16, "Untyped": 1}
_MARK = object()
CACHE_REPOS = ("models--", "datasets--", "spaces--")


class CheckpointError(ValueError):
    """A weight file that cannot be read, or that does not fit the model it is loaded into."""

    def __init__(self, path: PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


def load_state_dict(path: PathLike, location: str = "cpu") -> dict[str, Tensor]:
    """Flat {name: tensor} of a weight file; a `state_dict` wrapper is unwrapped and non-tensor entries dropped."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(path, "is a folder, not a weight file")
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(path, f"unsupported file type {suffix!r} (expected {', '.join(SUFFIXES)})")
    kind = file_format(path)
    if kind == "empty":
        raise corrupt(path, "empty file (0 bytes)")
    if kind == "zip":
        check_zip(path)
        obj = _read(path, lambda: torch.load(path, map_location=location, weights_only=True, mmap=True))
    elif kind == "pickle":
        check_legacy_sizes(path)
        obj = _read(path, lambda: torch.load(path, map_location=location, weights_only=True))
    elif kind == "safetensors" or suffix == ".safetensors":
        safetensors_header(path)
        obj = _read(path, lambda: load_file(path, device=location))
    else:
        raise corrupt(path, "not a checkpoint: neither a PyTorch file (zip or pickle) nor safetensors")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"not a checkpoint: holds a {type(obj).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(path, "not a checkpoint: it holds no tensors")
    return tensors


def file_format(path: Path) -> str:
    """"zip", "pickle", "safetensors", "empty" or "unknown", from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        return "empty"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return "safetensors"
    if head[0] == 0x80 and len(head) > 1 and head[1] in PICKLE_PROTOCOLS:
        return "pickle"
    return "unknown"


def safetensors_header(path: PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} of a safetensors file, from its header, after checking that the header fits the
    file: every tensor's bytes inside the file, matching its shape and dtype, the tensors covering the data."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(path, f"truncated: {size} bytes, less than the 8-byte header length of a safetensors file")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise corrupt(path, f"truncated or corrupt: the header declares {length} bytes, "
                                f"the file holds {size - 8} after the header length")
        if length > MAX_HEADER:
            raise corrupt(path, f"corrupt: a header of {length} bytes (safetensors allows {MAX_HEADER})")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise corrupt(path, f"corrupt: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise corrupt(path, "corrupt: the safetensors header is not a mapping of tensors")
    data = size - 8 - length
    entries, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, offsets = _entry(path, name, info)
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        begin, end = offsets
        if end - begin != nbytes:
            raise corrupt(path, f"corrupt: tensor {name!r} {dtype}{list(shape)} needs {nbytes} bytes, "
                                f"its offsets span {end - begin}")
        if end > data:
            raise corrupt(path, f"truncated: tensor {name!r} ends at byte {end} of the data, "
                                f"the file holds {data} bytes of data")
        entries[name] = (dtype, shape)
        spans.append((begin, end, name))
    covered = 0
    for begin, end, name in sorted(spans):
        if begin != covered:
            raise corrupt(path, f"corrupt: the tensors {'overlap' if begin < covered else 'leave a gap'} "
                                f"at byte {min(begin, covered)} of the data (tensor {name!r})")
        covered = end
    if covered != data:
        raise corrupt(path, f"corrupt: {data - covered} bytes after the last tensor")
    return entries


def check_zip(path: Path) -> None:
    """Check a zip archive's structure against the file: its closing directory, for every record the local header
    (signature, name) and the extent of its data inside the file (torch reads records by the offsets of the
    directory and would not notice a damaged local header), and the storage sizes its pickle declares against
    the records holding them."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
            for info in archive.infolist():
                f.seek(info.header_offset)
                local = f.read(LOCAL_HEADER)
                name_length, extra_length = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
                name = f.read(name_length)
                if local[:4] != ZIP_MAGIC or name != info.filename.encode():
                    raise corrupt(path, f"corrupt: the zip record {info.filename!r} has a damaged header")
                end = info.header_offset + LOCAL_HEADER + name_length + extra_length + info.compress_size
                if end > size:
                    raise corrupt(path, f"truncated: the zip record {info.filename!r} ends at byte {end}, "
                                        f"the file has {size}")
            records = {info.filename: info.file_size for info in archive.infolist()}
            pickled = [name for name in records if name.endswith("/data.pkl") or name == "data.pkl"]
            if pickled and records[pickled[0]] <= MAX_HEADER:
                prefix = pickled[0][: -len("data.pkl")]
                with archive.open(pickled[0]) as pkl:
                    declared = _declared_storages(pkl)
                for key, nbytes in declared.items():
                    held = records.get(f"{prefix}data/{key}")
                    if held is not None and nbytes > held:
                        raise corrupt(path, f"corrupt: storage {key} declares {nbytes} bytes, its record holds {held}")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise corrupt(path, f"truncated or corrupt zip archive (PyTorch file): {e}") from None


def check_legacy_sizes(path: Path) -> None:
    """A legacy (pre-zip) PyTorch file: torch allocates each storage at the size the pickle declares before it
    reads the data, so the declared sizes are added up first, from the pickle's opcodes (nothing is executed),
    and checked against the file."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            declared = {}
            for _ in range(LEGACY_PICKLES):  # magic number, protocol, system info, then the object with its storages
                if not f.peek(1):
                    break  # a plain pickle, not a torch file: torch.load says what is wrong with it
                declared |= _declared_storages(f)
    except Exception as e:  # a damaged pickle: pickletools raises ValueError, EOFError, ...
        raise corrupt(path, f"unreadable: not a checkpoint, or corrupt or truncated (bad pickle data: {e})") from None
    total = sum(declared.values())
    if total > size:
        raise corrupt(path, f"corrupt or truncated: its tensors declare {total} bytes, the file has {size}")


def _declared_storages(f) -> dict[str, int]:
    """{storage key: bytes} of the persistent ids ('storage', type, key, location, numel, ...) of one pickle,
    by a stack machine over its opcodes that tracks constants, tuples and the memo and nothing else.
    A damaged pickle raises ValueError, whatever the damage does to the machine."""
    try:
        return _run_stack_machine(f)
    except (IndexError, KeyError, TypeError) as e:  # opcodes that take more from the stack than it holds, ...
        raise ValueError(f"bad pickle data ({type(e).__name__}: {e})") from None


def _run_stack_machine(f) -> dict[str, int]:
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    found: dict[str, int] = {}
    for op, arg, _ in pickletools.genops(f):
        name = op.name
        if name == "STOP":
            break
        if name == "MARK":
            stack.append(_MARK)
        elif name == "TUPLE":
            at = _last_mark(stack)
            stack[at:] = [tuple(stack[at + 1:])]
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            stack[-n:] = [tuple(stack[-n:])]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif name == "BINPERSID":
            pid = stack.pop()
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[4], int):
                kind = str(pid[1]).rsplit(" ", 1)[-1].removesuffix("Storage")
                found[str(pid[2])] = pid[4] * STORAGE_BYTES.get(kind, max(STORAGE_BYTES.values()))
            stack.append(None)
        elif op.arg is not None and not op.stack_before and len(op.stack_after) == 1:
            stack.append(arg)  # a constant: string, number, or a global's "module name"
        else:  # any other opcode: pop what it takes, push opaque results
            before = list(op.stack_before)
            if pickletools.markobject in before:
                at = _last_mark(stack)
                del stack[at:]
                before = before[:before.index(pickletools.markobject)]
            if before:
                del stack[len(stack) - len(before):]
            stack.extend([None] * len(op.stack_after))
    return found


def _last_mark(stack: list) -> int:
    return len(stack) - 1 - stack[::-1].index(_MARK)


def _entry(path: Path, name: str, info: Any) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    if not isinstance(info, dict):
        raise corrupt(path, f"corrupt: header entry {name!r} is not a tensor description")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise corrupt(path, f"corrupt: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise corrupt(path, f"corrupt: tensor {name!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(n) is int for n in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise corrupt(path, f"corrupt: tensor {name!r} has invalid data offsets {offsets!r}")
    return dtype, tuple(shape), (offsets[0], offsets[1])


def corrupt(path: Path, problem: str) -> CheckpointError:
    """A CheckpointError for a damaged file; a copy in the Hugging Face cache is named for deletion."""
    return CheckpointError(path, problem + hub_cache_hint(path))


def hub_cache_hint(path: PathLike) -> str:
    """For a file in the Hugging Face cache (a snapshot link to a blob, or a plain copy where links are not
    available): which file to delete so that the next run downloads it again."""
    path = Path(path)
    blob = path.resolve()
    if blob.parent.name == "blobs" and blob.parent.parent.name.startswith(CACHE_REPOS):
        link = f" (and the link {path})" if path != blob else ""
        return f". It is a copy in the Hugging Face cache: delete {blob}{link} and it will be downloaded again"
    parts = path.parts
    if "snapshots" in parts and any(p.startswith(CACHE_REPOS) for p in parts[: parts.index("snapshots")]):
        return f". It is a copy in the Hugging Face cache: delete {path} and it will be downloaded again"
    return ""


def _read(path: Path, reader: Any) -> Any:
    try:
        return reader()
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(path, f"holds pickled Python objects ({found.group(1)}); refusing to unpickle them") from e
        raise corrupt(path, "unreadable: not a checkpoint, or corrupt or truncated (bad pickle data)") from e
    except Exception as e:  # torch and safetensors raise many types (RuntimeError, SafetensorError, EOFError, …)
        raise corrupt(path, f"unreadable: not a checkpoint, or corrupt or truncated ({type(e).__name__}: {e})") from e
