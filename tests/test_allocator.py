"""Process memory settings (`cldm.allocator`): large tensors on transparent huge pages, as launch.py sets up; freed
heap handed back (`ldm.heap`)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cldm.allocator import HUGE_PAGES, use_huge_pages
from ldm.heap import LIBC

ROOT = Path(__file__).resolve().parents[1]
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# Allocates and touches a 64 MB tensor, then prints the process's anonymous huge-page total in kB.
TOUCH_64MB = """
import re, torch
t = torch.ones(16 * 2**20)
print("huge_kb", re.search(r"AnonHugePages:\\s+(\\d+)", open("/proc/self/smaps_rollup").read()).group(1))
"""


def huge_kb(code: str, env: dict[str, str]) -> int:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(re.search(r"huge_kb (\d+)", out.stdout).group(1))


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in HUGE_PAGES}


needs_thp = pytest.mark.skipif(not THP_MODE.exists() or "[never]" in THP_MODE.read_text(),
                               reason="this kernel gives no transparent huge pages")


def test_use_huge_pages_sets_pytorchs_switch_and_leaves_a_users_choice(monkeypatch):
    for name in HUGE_PAGES:
        monkeypatch.delenv(name, raising=False)
    use_huge_pages()
    assert {name: os.environ[name] for name in HUGE_PAGES} == HUGE_PAGES
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    use_huge_pages()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


@needs_thp
def test_launch_puts_large_tensors_on_huge_pages():
    # launch.main runs to its argument parsing (--help exits); torch is imported after, as in a real start.
    code = "import launch\ntry:\n    launch.main(['generate', '--help'])\nexcept SystemExit:\n    pass\n" + TOUCH_64MB
    with_launch = huge_kb(code, base_env())
    without = huge_kb(TOUCH_64MB, base_env())
    switched_off = huge_kb(code, base_env() | {"THP_MEM_ALLOC_ENABLE": "0"})
    assert with_launch >= 32 * 1024, with_launch  # most of the 64 MB tensor
    assert without < 32 * 1024 and switched_off < 32 * 1024, (without, switched_off)


# 200 blocks of 1 MB, each followed by a small one that stays, so the freed ones cannot merge into the heap's top
# (which free() would hand back by itself); prints the anonymous resident kB before and after freeing them and
# after `release_free_memory`.
FREE_200MB = """
import re, torch
from ldm.heap import release_free_memory
def anon():
    return int(re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
big = torch.ones(2**20)
del big  # a 4 MB block mapped and unmapped: glibc then keeps blocks up to 4 MB in its heap
blocks, kept = [], []
for _ in range(200):
    blocks.append(torch.ones(2**18))
    kept.append(torch.ones(16))
before = anon()
del blocks
freed = anon()
release_free_memory()
print("anon_kb", before, freed, anon())
"""


@pytest.mark.skipif(LIBC is None, reason="not glibc: release_free_memory does nothing here")
def test_release_free_memory_hands_freed_heap_blocks_back():
    out = subprocess.run([sys.executable, "-c", FREE_200MB], cwd=ROOT, env=base_env() | {"THP_MEM_ALLOC_ENABLE": "0"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, freed, after = map(int, re.search(r"anon_kb (\d+) (\d+) (\d+)", out.stdout).groups())
    assert freed > before - 50 * 1024, (before, freed)  # freed, but still resident in malloc's heap
    assert freed - after > 150 * 1024, (before, freed, after)  # handed back
