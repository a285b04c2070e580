"""Hand the memory malloc holds free back to the system (glibc's `malloc_trim`).

glibc keeps freed blocks below its mmap threshold (up to 32 MB) in its heap, resident, for reuse. Inference frees
many such blocks and then allocates larger ones that cannot reuse them (the VAE decoder's activations grow 4× per
level), so the freed ones stay resident beside the new ones, at the run's memory peak, unless handed back.
Elsewhere than glibc (macOS, musl, Windows) `release_free_memory` does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


LIBC = _libc()


def release_free_memory() -> None:
    """Hand the memory malloc holds free (in every arena) back to the system."""
    if LIBC is not None:
        LIBC.malloc_trim(0)
