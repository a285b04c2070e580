"""Keep a long-running server's memory flat: glibc's malloc tuned for many short requests.

Each run samples in a worker thread of its own, and glibc gives threads separate malloc arenas (up to 8 per
core); the tensors a run frees stay in its arena, so the resident size of a server that has served a few
hundred requests creeps up by half or more although nothing is kept. With two arenas and the free memory
handed back to the system after each run (`malloc_trim`), it stays within a few percent of its size after
the first requests (measured with `python -m bench.load`). A generation on the CPU also trims once between
sampling and decoding (`cldm.pipeline`): the decoder's buffers at 512² are fresh mappings, and the heap the
sampler freed would otherwise stay resident beside them, at the run's memory peak (the VAE decoder trims again
between its levels, `ldm.vae`). Elsewhere than glibc (macOS, musl, Windows) both calls do nothing.

Large tensors are backed by transparent huge pages (`use_huge_pages`): a 512² VAE decode allocates about 2 GB of
fresh buffers, and with 4 KB pages the kernel faults and zeroes them one page at a time (about 475 000 faults
per decode, 15 000 with 2 MB pages; the decode 3-12 % faster on a 2-core CPU).
"""
from __future__ import annotations

import logging
import os

from ldm.heap import LIBC, release_free_memory

__all__ = ["limit_arenas", "release_free_memory", "use_huge_pages"]

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
SERVER_ARENAS = 2
# PyTorch's switch: CPU tensors of 2 MB and more are 2 MB-aligned and advised MADV_HUGEPAGE, which a kernel
# whose transparent huge pages are set to `madvise` (the common default) or `always` honours.
HUGE_PAGES = {"THP_MEM_ALLOC_ENABLE": "1"}


def limit_arenas(arenas: int = SERVER_ARENAS) -> bool:
    """At most `arenas` malloc arenas for the whole process; whether it took effect. glibc fixes the limit when
    it first needs a second arena, so call this before any thread is started (before importing torch)."""
    if LIBC is None:
        return False
    done = bool(LIBC.mallopt(M_ARENA_MAX, arenas))
    if not done:
        log.warning("mallopt(M_ARENA_MAX, %d) failed; memory may grow with the number of requests", arenas)
    return done


def use_huge_pages() -> None:
    """Back large CPU tensors with transparent huge pages, unless the environment already sets PyTorch's switch
    (THP_MEM_ALLOC_ENABLE=0 turns it off). PyTorch reads it at its first allocation: call this before torch is
    imported."""
    for name, value in HUGE_PAGES.items():
        os.environ.setdefault(name, value)
