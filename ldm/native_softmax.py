"""A faster bfloat16 softmax for the CPU attention, compiled from softmax.c on first use.

The score blocks of the 64×64 self-attention are 9 % of a 512² UNet step in bfloat16 on a CPU, and PyTorch's
softmax is most of that: its float32-exact exponential costs more than a result rounded to bfloat16 needs.
`softmax.c` is built once per machine (and per compiler, CPU and source) with the system's C compiler, into
the user's cache folder, and loaded with ctypes. Where that cannot be done (no compiler, a PyTorch without the
GNU OpenMP runtime, an unwritable folder), `softmax` is PyTorch's: the kernel is a speed-up, never a
requirement, and float32, CUDA and autograd always take PyTorch's.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from ldm.layout import is_cpu_bfloat16

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("softmax.c")
# -ffast-math at the compile step only: the link step below is plain, so the library does not turn on
# flush-to-zero for the whole process (which would change every float32 result that meets a subnormal).
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC")


class KernelUnavailable(RuntimeError):
    """The C softmax cannot be built or loaded on this machine; the message says why."""


def openmp_runtime() -> Path:
    """PyTorch's own OpenMP library. The kernel links to it, so it runs on PyTorch's threads and a second
    runtime's idle threads do not spin on the same cores."""
    folder = Path(torch.__file__).parent / "lib"
    found = sorted(folder.glob("libgomp*.so*"))
    if not found:
        raise KernelUnavailable(f"no GNU OpenMP library in {folder} (this PyTorch build uses another runtime)")
    return found[0]


def cpu_signature() -> str:
    """What -march=native compiles for: the CPU's feature flags where the system lists them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line for line in lines if line.startswith(("flags", "Features"))), platform.processor())


def default_folders() -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [cache / "controlnet-demo" / "kernels", Path(tempfile.gettempdir()) / "controlnet-demo-kernels"]


def build_kernel(folder: Path, compiler: str | None = None, source: Path = SOURCE) -> ctypes.CDLL:
    """Compile `source` into `folder` (unless a build of the same source, compiler and CPU is there) and load it.
    Raises KernelUnavailable with the reason when that fails."""
    compiler = compiler or os.environ.get("CC") or "cc"
    gomp = openmp_runtime()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True,
                                 timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"no working C compiler ({compiler}): {e}") from e
    key = hashlib.sha256("\0".join([source.read_text(), version, *COMPILE_FLAGS, str(gomp),
                                    cpu_signature()]).encode()).hexdigest()[:16]
    target = folder / f"softmax-{key}.so"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # built aside, then renamed: no half-written file
            obj, lib = Path(tmp) / "softmax.o", Path(tmp) / "softmax.so"
            for command in ([compiler, *COMPILE_FLAGS, "-c", str(source), "-o", str(obj)],
                            [compiler, "-shared", str(obj), str(gomp), f"-Wl,-rpath,{gomp.parent}", "-o", str(lib)]):
                done = subprocess.run(command, capture_output=True, text=True, timeout=300)
                if done.returncode:
                    raise KernelUnavailable(f"{' '.join(command)} failed: {done.stderr.strip()[-800:]}")
            os.replace(lib, target)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as e:
        raise KernelUnavailable(f"cannot load {target}: {e}") from e
    lib.softmax_rows_bf16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.softmax_rows_bf16.restype = ctypes.c_int
    return lib


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled softmax, built on first use; None where it cannot be (the reason is logged once)."""
    reasons = []
    for folder in default_folders():
        try:
            return build_kernel(folder)
        except OSError as e:  # an unwritable cache folder: try the next one
            reasons.append(f"{folder}: {e}")
        except KernelUnavailable as e:
            reasons.append(str(e))
            break
    log.info("bfloat16 attention uses PyTorch's softmax: %s", "; ".join(reasons))
    return None


def softmax(scores: Tensor, out: Tensor, lib: ctypes.CDLL | None = None) -> Tensor:
    """torch.softmax(scores, dim=-1, out=out) for a 2-D matrix; `out` may be `scores`. In bfloat16 on the CPU,
    without autograd, by the compiled kernel (`lib`, default: the one built for this machine) where there is one."""
    if (is_cpu_bfloat16(scores) and not scores.requires_grad and scores.ndim == 2 and scores.is_contiguous()
            and out.is_contiguous() and out.dtype == scores.dtype and out.shape == scores.shape):
        lib = lib or kernel()
        if lib is not None:
            rows, cols = scores.shape
            if lib.softmax_rows_bf16(scores.data_ptr(), out.data_ptr(), rows, cols, torch.get_num_threads()):
                raise MemoryError(f"softmax: no memory for a row of {cols} float32 values")
            return out
    return torch.softmax(scores, dim=-1, out=out)
