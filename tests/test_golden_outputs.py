"""Every 1.0 app and the multi page give the same images for the same settings and seed as when the
reference images in tests/golden/ were made (tiny model, every weight random and non-zero, so the control
path shows in the samples). A change that alters any app's maps or samples by more than 1 in a pixel fails.

Rewrite the references only for a change that is meant to alter outputs: `python -m tests.test_golden_outputs`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from apps.backend import Backend
from apps.controls import A_PROMPT, N_PROMPT
from apps.images import read_image
from apps.multi_request import check_unit, run_multi, validate_multi
from apps.registry import APPS
from apps.spec import run_app, validate
from cldm.shared_model import SharedModel

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
IMAGES = {"canny": "astronaut.png", "mlsd": "rocket.png", "hed": "chelsea.png", "scribble": "house_sketch.png",
          "scribble_interactive": "stick_figure_scribble.png", "fake_scribble": "coffee.png", "pose": "astronaut.png",
          "seg": "rocket.png", "depth": "coffee.png", "normal": "chelsea.png"}
CASES = {name: (name, {}) for name in IMAGES} | {
    "canny_guess_eta": ("canny", {"guess_mode": True, "eta": 0.5, "num_samples": 2, "strength": 0.7}),
    "depth_11": ("depth", {"weights": "cn11_depth", "scale": 4.0}),
}
MODES = ("balanced", "guess", "cfg_resolution_weighting")


def app_outputs(backend: Backend, case: str) -> dict[str, np.ndarray]:
    name, changes = CASES[case]
    spec, changes = APPS[name], dict(changes)
    values = {p.name: p.default for p in spec.controls} | {"num_samples": 1, "image_resolution": 256, "ddim_steps": 4,
                                                           "seed": 1234}
    if spec.detect_resolution is not None:
        values["detect_resolution"] = 256
    weights = changes.pop("weights", None)
    image = read_image(ROOT / "test_imgs" / IMAGES[name])
    request = validate(spec, values | changes, "a photo of a house", A_PROMPT, N_PROMPT, weights)
    result = run_app(spec, backend, {"layers": [], "composite": image} if spec.canvas else image, request)
    return {f"{case}_map": result.display_map, **{f"{case}_sample{i}": s for i, s in enumerate(result.samples)}}


def multi_outputs(backend: Backend, mode: str) -> dict[str, np.ndarray]:
    image = read_image(ROOT / "test_imgs" / "astronaut.png")
    units = [check_unit(1, image, "canny", "cn10_canny", 1.0, 0.0, 1.0),
             check_unit(2, image, "depth", "cn10_depth", 0.6, 0.25, 1.0, {"detect_resolution": 256})]
    values = {"num_samples": 1, "image_resolution": 256, "ddim_steps": 4, "scale": 9.0, "seed": 99, "eta": 0.0}
    result = run_multi(backend, validate_multi(units, values, "a person", A_PROMPT, N_PROMPT, mode))
    return {**{f"multi_{mode}_map{k}": m for k, m in enumerate(result.maps)},
            **{f"multi_{mode}_sample{i}": s for i, s in enumerate(result.samples)}}


@pytest.fixture(scope="module")
def backend() -> Backend:
    return Backend(SharedModel(tiny=True, device="cpu"))


def assert_golden(outputs: dict[str, np.ndarray]) -> None:
    for name, image in outputs.items():
        reference = np.array(PIL.Image.open(GOLDEN / f"{name}.png")).astype(int)
        assert image.shape == reference.shape, name
        assert np.abs(image.astype(int) - reference).max() <= 1, f"{name} differs from tests/golden/{name}.png"


@pytest.mark.parametrize("case", CASES)
def test_app_outputs_are_unchanged(backend, case):
    assert_golden(app_outputs(backend, case))


@pytest.mark.parametrize("mode", MODES)
def test_multi_outputs_are_unchanged(backend, mode):
    assert_golden(multi_outputs(backend, mode))


def test_the_references_show_control():
    """Different apps give different samples: the control path is in the references, not only the noise."""
    samples = [np.array(PIL.Image.open(GOLDEN / f"{case}_sample0.png")) for case in ("canny", "pose", "scribble")]
    assert not np.array_equal(samples[0], samples[1]) and not np.array_equal(samples[1], samples[2])


if __name__ == "__main__":
    shared = Backend(SharedModel(tiny=True, device="cpu"))
    written = {}
    for case in CASES:
        written |= app_outputs(shared, case)
    for mode in MODES:
        written |= multi_outputs(shared, mode)
    for name, image in written.items():
        PIL.Image.fromarray(np.ascontiguousarray(image)).save(GOLDEN / f"{name}.png")
    print(f"wrote {len(written)} reference images to {GOLDEN}", file=sys.stderr)
