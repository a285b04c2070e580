"""The Fast preset and LoRA files on the shared model: merged per request and unmerged bit for bit; the choices
checked on the server; Fast's ranges for Steps and Guidance Scale."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from apps.backend import Backend, find_loras, lora_option
from apps.controls import Choices, check_choices
from apps.errors import InvalidInput
from apps.images import read_image
from apps.registry import APPS
from apps.spec import run_app, validate
from cldm.shared_model import SharedModel
from tests.test_golden_outputs import ROOT

SPEC = APPS["canny"]


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def kohya_lora(model, path, seed=0, rank=2):
    """A kohya-format LoRA (original module names) on the UNet's attention projections of `model`."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if name.startswith("model.diffusion_model.") and name.endswith(("to_q", "to_v")):
            key = "lora_unet_" + name[len("model.diffusion_model."):].replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=gen)
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=gen) * 0.1
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    shared = SharedModel(tiny=True, device="cpu")
    with shared.activate("cn10_canny") as model:
        path = kohya_lora(model, tmp_path_factory.mktemp("lora") / "style.safetensors")
    files, chosen = find_loras([f"{path}:0.8"], folder=None)
    return Backend(shared, files, chosen)


def run(backend, choices: Choices, **values):
    controls = {p.name: p.default for p in SPEC.controls} | {"image_resolution": 256, "ddim_steps": 2, "seed": 3} | values
    request = validate(SPEC, controls, "a house", "", "", None, choices)
    return run_app(SPEC, backend, read_image(ROOT / "test_imgs" / "astronaut.png"), request).samples[0]


def test_lora_option_and_files(backend):
    assert lora_option("a/b.safetensors:0.5") == (lora_option("a/b.safetensors")[0], 0.5)
    assert lora_option("C:/x/b.safetensors")[1] == 1.0
    assert backend.preselected_loras == (("style.safetensors", 0.8),)
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_loras(["missing.safetensors"], folder=None)


def test_a_lora_changes_the_image_and_unloads_exactly(backend):
    with backend.model.activate("cn10_canny") as model:
        base = state(model)
    plain = run(backend, check_choices())
    styled = run(backend, check_choices(loras=["style.safetensors"], lora_scale=0.8, lora_files=backend.lora_files))
    assert backend.model.status()["loras"] == [f"{backend.lora_files['style.safetensors']} ×0.8"]
    assert not np.array_equal(plain, styled)
    assert np.array_equal(plain, run(backend, check_choices()))  # unloaded: the original image again
    with backend.model.activate("cn10_canny") as model:
        assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


def test_fast_merges_the_lcm_lora_and_uses_its_ranges(backend):
    fast = check_choices("euler", True)
    assert fast.sampler == "lcm" and fast.all_loras() == (("lcm_lora", 1.0),)
    image = run(backend, fast, ddim_steps=4, scale=1.0)
    assert backend.model.status()["loras"] == ["lcm_lora ×1"]
    assert not np.array_equal(image, run(backend, check_choices("lcm"), ddim_steps=4, scale=1.0))
    for values, words in (({"ddim_steps": 20}, "Steps"), ({"ddim_steps": 4, "scale": 9.0}, "Guidance Scale")):
        with pytest.raises(InvalidInput, match=words):
            run(backend, fast, **values)


@pytest.mark.parametrize("kwargs,words", [
    ({"fast": "yes"}, "Fast: expected true or false"),
    ({"loras": ["nope.safetensors"]}, "not offered"),
    ({"loras": [1]}, "expected a list of file names"),
    ({"lora_scale": 5}, "LoRA scale"),
    ({"sampler": "plms"}, "Sampler"),
])
def test_bad_choices_are_refused(backend, kwargs, words):
    with pytest.raises(InvalidInput, match=words):
        check_choices(**kwargs, lora_files=backend.lora_files)


def test_a_lora_for_another_model_is_refused_by_name(backend, tmp_path):
    bad = tmp_path / "sdxl.safetensors"
    save_file({"lora_unet_not_a_module.lora_down.weight": torch.zeros(2, 4)}, str(bad))
    from cldm.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="sdxl.safetensors"):
        with backend.model.activate("cn10_canny", [(str(bad), 1.0)]):
            pass
    assert backend.model.active_loras == ()


def test_fast_decode_uses_taesd_for_the_final_images(backend):
    vae = run(backend, check_choices())
    taesd = run(backend, check_choices(fast_decode=True))
    assert taesd.shape == vae.shape and not np.array_equal(taesd, vae)
    with pytest.raises(InvalidInput, match="Fast decode"):
        check_choices(fast_decode="no")


def test_previews_are_optional_when_taesd_cannot_be_had(backend, monkeypatch):
    from weights.files import WeightsUnavailable

    def missing():
        raise WeightsUnavailable("TAESD: weight file 'diffusion_pytorch_model.safetensors' is missing")

    seen = []
    controls = {p.name: p.default for p in SPEC.controls} | {"image_resolution": 256, "ddim_steps": 3, "seed": 3}
    request = validate(SPEC, controls, "a house", "", "", None, check_choices())
    image = read_image(ROOT / "test_imgs" / "astronaut.png")
    with_previews = run_app(SPEC, backend, image, request, on_preview=lambda *p: seen.append(p[1:]))
    assert seen == [(1, 3), (2, 3)]
    monkeypatch.setattr(backend.model, "taesd", missing)
    seen.clear()
    without = run_app(SPEC, backend, image, request, on_preview=lambda *p: seen.append(p[1:]))
    assert seen == [] and np.array_equal(without.samples[0], with_previews.samples[0])
