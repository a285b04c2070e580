"""Hosting on a Space: the generation functions run under `spaces.GPU` with a duration estimated from the request
only on a Space with the `spaces` package (a fake one here), the Space entry's options, and README.md's
`preload_from_hub` matching the weights the default settings use (derived from the weights table)."""
from __future__ import annotations

import importlib
import inspect
import sys

import numpy as np
import pytest

import app
import launch
from apps.backend import Backend
from apps.builder import CancelToken, build_demo
from apps.multi_request import COMMON
from apps.pages import PAGES
from apps.registry import APPS
from apps.space import (README, front_matter_preload, gpu_seconds, preload_entries, preload_keys, with_preload)
from cldm.shared_model import SharedModel
from weights.table import WEIGHTS

FAKE_SPACES = '''
SEEN = []

import inspect

def GPU(task=None, *, duration=None):
    # As the real package: coroutine (and async generator) functions are not supported; generators stay generators.
    def wrap(fn):
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise NotImplementedError
        SEEN.append((fn.__name__, duration))
        if inspect.isgeneratorfunction(fn):
            def wrapped(*args, **kwargs):
                yield from fn(*args, **kwargs)
        else:
            def wrapped(*args, **kwargs):
                return fn(*args, **kwargs)
        wrapped.__wrapped__ = fn
        wrapped.zerogpu = True
        return wrapped
    return wrap if task is None else wrap(task)
'''


@pytest.fixture()
def fake_spaces(tmp_path, monkeypatch):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "__init__.py").write_text(FAKE_SPACES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    importlib.invalidate_caches()
    yield
    sys.modules.pop("spaces", None)


def build(backend_pages=("canny", "multi")):
    backend = Backend(SharedModel(tiny=True, device="cpu"))
    return build_demo([PAGES[name] for name in backend_pages], backend)


def event_fn(demo, api_name: str):
    return next(f.fn for f in demo.fns.values() if f.api_name == api_name)


def test_gpu_seconds_formula():
    assert gpu_seconds(20, 1, 512) == 30  # 20 + 0.15·20 = 23 -> 30 (the minimum)
    assert gpu_seconds(50, 4, 512) == 50  # 20 + 0.15·200 = 50
    assert gpu_seconds(50, 4, 768) == 90  # 20 + 0.15·450 = 87.5 -> 90
    assert gpu_seconds(50, 4, 512, units=3) == 80  # ×1.8: 20 + 0.15·360 = 74 -> 80
    assert gpu_seconds(100, 12, 768) == 240  # capped
    assert gpu_seconds("junk", None, -5) == 240  # what the request will refuse counts as the largest


def test_generation_runs_under_spaces_gpu_on_a_space(fake_spaces, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/controlnet")
    demo = build()
    import spaces

    assert [name for name, _ in spaces.SEEN] == ["process", "process_page", "process_api"]
    durations = dict(spaces.SEEN)
    names = [p.name for p in APPS["canny"].controls]
    values = {p.name: p.default for p in APPS["canny"].controls} | {"num_samples": 4, "ddim_steps": 50,
                                                                     "image_resolution": 768}
    assert durations["process"](None, None, "a house", *(values[n] for n in names), "a", "n", "cn10_canny") == 90
    common = {"num_samples": 4, "ddim_steps": 50, "image_resolution": 512, "scale": 9, "seed": 1, "eta": 0}
    unit = [object(), "canny", "cn10_canny", 1.0, 0.0, 1.0]
    empty = [None, "depth", "cn10_depth", 1.0, 0.0, 1.0]
    page_args = [*unit, *unit, *empty, "prompt", *(common[p.name] for p in COMMON)]
    assert durations["process_page"](None, *page_args) == gpu_seconds(50, 4, 512, units=2)
    assert durations["process_api"](None, [{}, {}, {}], [], "p", *(common[p.name] for p in COMMON)) == \
           gpu_seconds(50, 4, 512, units=3)
    assert getattr(event_fn(demo, "canny"), "zerogpu", False) and getattr(event_fn(demo, "multi"), "zerogpu", False)
    assert inspect.isgeneratorfunction(event_fn(demo, "canny"))  # the async handler, driven as a plain generator


def test_a_wrapped_handler_still_generates(fake_spaces, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/controlnet")
    process = event_fn(build(("canny",)), "canny")
    values = {p.name: p.default for p in APPS["canny"].controls} | {"ddim_steps": 2, "image_resolution": 256, "seed": 3}
    image = np.full((256, 256, 3), 128, np.uint8)
    image[64:192, 64:192] = 255
    args = [CancelToken(), image, "a house", *(values[p.name] for p in APPS["canny"].controls), "a", "n",
            APPS["canny"].weights[0], False, "ddim", [], 1.0, False]
    outputs = list(process(*args, progress=lambda *a, **k: None))
    gallery, line, _ = outputs[-1]
    assert len(gallery) == 2 and "Seed used: **3**" in line


def test_nothing_changes_off_a_space(fake_spaces, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    demo = build(("canny",))
    import spaces

    assert spaces.SEEN == [] and not hasattr(event_fn(demo, "canny"), "zerogpu")


def test_a_space_without_the_spaces_package_runs_unwrapped(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/controlnet")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "spaces" else
                        importlib.machinery.PathFinder.find_spec(name))
    assert not hasattr(event_fn(build(("canny",)), "canny"), "zerogpu")


def test_the_space_entry_serves_everything_in_the_hardwares_precision(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/controlnet")
    args = launch.serve_parser(tuple(PAGES)).parse_args(app.space_argv([]))
    assert (args.app, args.listen, args.dtype) == ("all", True, "auto")
    assert launch.serve_parser(tuple(PAGES)).parse_args(app.space_argv(["--dtype", "float32"])).dtype == "float32"


def test_readme_preloads_the_default_weights():
    keys = preload_keys()
    assert {"sd15", "lcm_lora", "taesd", "cn10_canny_fp16", "hed", "midas", "openpose_body", "uniformer"} <= set(keys)
    assert {"cn11_canny_fp16", "zoe", "lineart", "pidinet"} <= set(keys)  # the 1.1 apps' defaults (Depth_Zoe, …)
    assert not {"cn11_canny", "lineart_coarse", "lineart_anime"} & set(keys)  # not used by the default settings
    entries = front_matter_preload(README.read_text())
    assert entries == preload_entries(), "README.md is out of date: run `python -m apps.space`"
    listed = {(e.split(" ")[0], name) for e in entries for name in e.split(" ")[1].split(",")}
    assert listed == {(WEIGHTS[k].repo, WEIGHTS[k].filename) for k in keys}


def test_preload_block_is_rewritten_in_place():
    readme = "---\ntitle: x\npreload_from_hub:\n  - old/repo a.bin\nsdk: gradio\n---\n\n# Body\n"
    written = with_preload(readme, ["a/b c.pth,d.pth", "e/f g.bin"])
    assert written == "---\ntitle: x\nsdk: gradio\npreload_from_hub:\n  - a/b c.pth,d.pth\n  - e/f g.bin\n---\n\n# Body\n"
    assert front_matter_preload(written) == ["a/b c.pth,d.pth", "e/f g.bin"]
    assert with_preload(written, ["a/b c.pth,d.pth", "e/f g.bin"]) == written
