"""generate(): equivalence with the original's process flow, seeding, callbacks, validation, dtypes;
several ControlNets and the control modes (cldm.control)."""
import dataclasses

import numpy as np
import pytest
import torch

from cldm.control import ControlledDenoiser, ControlMode, ControlUnit, block_weights
from cldm.ddim import DDIMSampler, SamplingCancelled, initial_noise
from cldm.pipeline import GenerationInputError, GenerationParams, generate, generate_multi
from cldm.samplers import SAMPLERS
from tests.tiny import random_model

SIZE = 64  # image side; latents are 8×8


@pytest.fixture(scope="module")
def model():
    return random_model(seed=4)[0]


@pytest.fixture(scope="module")
def control_map():
    return np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def params(**overrides) -> GenerationParams:
    base = dict(prompt="a house", num_samples=2, steps=3, seed=123, scale=6.0, strength=0.9)
    return GenerationParams(**{**base, **overrides})


def original_process(model, control_map, p: GenerationParams) -> list[np.ndarray]:
    """The original app's `process` spelled out with the compatibility sampler."""
    n = p.num_samples
    control = torch.from_numpy(control_map.copy()).float() / 255.0
    control = control.permute(2, 0, 1)[None].repeat(n, 1, 1, 1)
    cond = {"c_concat": [control], "c_crossattn": [model.get_learned_conditioning([p.prompt + ", " + p.a_prompt] * n)]}
    uncond = {"c_concat": None if p.guess_mode else [control],
              "c_crossattn": [model.get_learned_conditioning([p.n_prompt] * n)]}
    k = len(model.control_scales)
    model.control_scales = [p.strength * 0.825 ** (k - 1 - i) for i in range(k)] if p.guess_mode else [p.strength] * k
    g = torch.Generator().manual_seed(p.seed)
    x_t = initial_noise((n, 4, SIZE // 8, SIZE // 8), g, "cpu")
    samples, _ = DDIMSampler(model).sample(p.steps, n, (4, SIZE // 8, SIZE // 8), cond, eta=p.eta,
                                           unconditional_guidance_scale=p.scale, unconditional_conditioning=uncond,
                                           x_T=x_t, generator=g)
    x = model.decode_first_stage(samples)
    return list((x.permute(0, 2, 3, 1) * 127.5 + 127.5).numpy().clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("guess_mode,eta", [(False, 0.0), (True, 0.5)])
def test_generate_equals_original_process(model, control_map, guess_mode, eta):
    p = params(guess_mode=guess_mode, eta=eta)
    result = generate(model, control_map, p)
    with torch.no_grad():
        expected = original_process(model, control_map, p)
    assert result.seed == 123 and len(result.images) == 2
    for a, b in zip(result.images, expected):
        assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_ddim_sampler_intermediates(model):
    cond = {"c_concat": None, "c_crossattn": [torch.randn(1, 77, 32)]}
    samples, inter = DDIMSampler(model).sample(4, 1, (4, 8, 8), cond, generator=torch.Generator().manual_seed(0))
    # x_T, then the first step (index total-1) and every index divisible by 100 (here only the last step).
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 3
    assert torch.equal(inter["x_inter"][-1], samples)


def test_seed_determinism(model, control_map):
    a = generate(model, control_map, params(eta=1.0)).images
    b = generate(model, control_map, params(eta=1.0)).images
    c = generate(model, control_map, params(eta=1.0, seed=124)).images
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    random_seed = generate(model, control_map, params(seed=-1, num_samples=1, steps=1)).seed
    assert 0 <= random_seed <= 65535


def test_callback_once_per_step_and_cancel(model, control_map):
    calls = []
    generate(model, control_map, params(steps=4), callback=lambda i, n, x, x0: calls.append((i, n, x.shape)))
    assert [c[:2] for c in calls] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert calls[0][2] == (2, 4, 8, 8)
    with pytest.raises(SamplingCancelled):
        generate(model, control_map, params(steps=4), callback=lambda i, n, x, x0: i != 1)


def unet_batches(model, run) -> list[int]:
    sizes = []
    handle = model.model.diffusion_model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        run()
    finally:
        handle.remove()
    return sizes


def test_batched_cfg_normally_two_calls_in_guess_mode(model, control_map):
    assert unet_batches(model, lambda: generate(model, control_map, params(steps=2))) == [4, 4]
    assert unet_batches(model, lambda: generate(model, control_map, params(steps=2, guess_mode=True))) == [2, 2, 2, 2]
    assert unet_batches(model, lambda: generate(model, control_map, params(steps=2, scale=1.0))) == [2, 2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(control_map, dtype):
    half = random_model(seed=4)[0].to(dtype)
    images = generate(half, control_map, params(steps=2)).images
    full = generate(random_model(seed=4)[0], control_map, params(steps=2)).images
    assert images[0].shape == (SIZE, SIZE, 3) and images[0].dtype == np.uint8
    assert np.abs(images[0].astype(int) - full[0].astype(int)).mean() < 8


@pytest.mark.parametrize("field,value,words", [
    ("num_samples", 0, "num_samples must be between 1 and 12"),
    ("num_samples", 13, "num_samples"),
    ("steps", 101, "steps must be between 1 and 100"),
    ("strength", 2.5, "strength"),
    ("scale", 0.0, "scale must be between 0.1 and 30"),
    ("seed", -2, "seed"),
    ("seed", 2**31, "seed"),
    ("eta", -0.1, "eta"),
    ("steps", 2.5, "steps must be an integer"),
    ("prompt", None, "prompt must be a string"),
    ("guess_mode", "yes", "guess_mode must be true or false"),
    ("scale", "9", "scale must be a number"),
    ("eta", float("nan"), "eta must be between"),
])
def test_invalid_params(field, value, words):
    with pytest.raises(GenerationInputError, match=words):
        params(**{field: value})


def test_invalid_control_maps(model, control_map):
    for bad, words in [(control_map[:60], "multiples of 64"), (control_map.astype(np.float32), "uint8"),
                       (control_map[..., 0], "H×W×3")]:
        with pytest.raises(GenerationInputError, match=words):
            generate(model, bad, params())


# ----------------------------------------------------------------------------- several ControlNets, modes

def denoise_inputs(model, seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    hints = [torch.rand(n, 3, SIZE, SIZE, generator=g) for _ in range(2)]
    return torch.randn(n, 4, 8, 8, generator=g), torch.full((n,), 501), torch.randn(n, 77, 32, generator=g), hints


@pytest.fixture(scope="module")
def second_controlnet():
    return random_model(seed=9)[0].control_model


def eps_of(model, units, hints, mode=ControlMode.BALANCED, timesteps=torch.tensor([1, 501])):
    x, t, context, _ = denoise_inputs(model)
    cond = {"c_concat": hints, "c_crossattn": [context]}
    with torch.no_grad():
        return ControlledDenoiser(model, units, mode, timesteps)(x, t, cond)


def unet_with(model, residuals):
    x, t, context, _ = denoise_inputs(model)
    with torch.no_grad():
        return model.model.diffusion_model(x, t, context, residuals)


def test_two_identical_units_equal_one_at_double_strength(model, control_map):
    _, _, _, hints = denoise_inputs(model)
    two = eps_of(model, [ControlUnit(model.control_model, control_map, 0.6)] * 2, [hints[0]] * 2)
    one = eps_of(model, [ControlUnit(model.control_model, control_map, 1.2)], [hints[0]])
    torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-5)


def test_two_units_sum_their_residuals(model, control_map, second_controlnet):
    x, t, context, hints = denoise_inputs(model)
    units = [ControlUnit(model.control_model, control_map, 0.7), ControlUnit(second_controlnet, control_map, 1.3)]
    with torch.no_grad():
        r1 = model.control_model(x, hints[0], t, context)
        r2 = second_controlnet(x, hints[1], t, context)
    expected = unet_with(model, [0.7 * a + 1.3 * b for a, b in zip(r1, r2)])
    torch.testing.assert_close(eps_of(model, units, hints), expected, rtol=1e-5, atol=1e-5)


def test_unit_outside_its_window_contributes_nothing(model, control_map, second_controlnet):
    _, _, _, hints = denoise_inputs(model)
    # Two steps [501, 1]: t = 501 is step 0 of 2, i/n = 0.0.
    late = ControlUnit(second_controlnet, control_map, 1.0, start=0.5, end=1.0)
    early = ControlUnit(model.control_model, control_map, 1.0, start=0.0, end=0.5)
    alone = eps_of(model, [early], hints[:1])
    torch.testing.assert_close(eps_of(model, [early, late], hints), alone)
    assert not torch.allclose(alone, unet_with(model, None))
    torch.testing.assert_close(eps_of(model, [late], hints[1:]), unet_with(model, None))
    assert late.active(1, 2) and not late.active(0, 2) and early.active(0, 2) and not early.active(1, 2)


def per_block_reference(model, hint, weights):
    x, t, context, _ = denoise_inputs(model)
    with torch.no_grad():
        residuals = model.control_model(x, hint, t, context)
    return unet_with(model, [r * w for r, w in zip(residuals, weights(residuals))])


def test_modes_match_their_definitions(model, control_map):
    _, _, _, hints = denoise_inputs(model)
    unit = [ControlUnit(model.control_model, control_map, 0.9)]
    k = len(model.control_scales)
    definitions = {
        ControlMode.BALANCED: lambda res: [0.9] * k,
        ControlMode.GUESS: lambda res: [0.9 * 0.825 ** (k - 1 - i) for i in range(k)],
        ControlMode.CFG_RESOLUTION_WEIGHTING: lambda res: [0.9 * 8 / r.shape[-2] for r in res],
    }
    for mode, weights in definitions.items():
        torch.testing.assert_close(eps_of(model, unit, hints[:1], mode), per_block_reference(model, hints[0], weights))


def test_resolution_weights_for_sd15_block_heights():
    heights = [64] * 3 + [32] * 3 + [16] * 3 + [8] * 4
    residuals = [torch.zeros(1, 1, h, h) for h in heights]
    assert block_weights(ControlMode.CFG_RESOLUTION_WEIGHTING, 1.0, residuals) == [1.0] * 3 + [2.0] * 3 + [4.0] * 3 + [8.0] * 4
    assert block_weights(ControlMode.GUESS, 2.0, residuals)[-1] == 2.0
    assert abs(block_weights(ControlMode.GUESS, 1.0, residuals)[0] - 0.825 ** 12) < 1e-12


def test_generate_multi_modes_on_unconditional_branch(model, control_map, second_controlnet):
    units = [ControlUnit(model.control_model, control_map, 1.0), ControlUnit(second_controlnet, control_map[::-1].copy(), 0.5)]
    p = params(steps=2)
    assert unet_batches(model, lambda: generate_multi(model, units, p, ControlMode.BALANCED)) == [4, 4]
    assert unet_batches(model, lambda: generate_multi(model, units, p, ControlMode.CFG_RESOLUTION_WEIGHTING)) == [2] * 4
    a = generate_multi(model, units, p, ControlMode.BALANCED).images
    b = generate_multi(model, units[:1], p, ControlMode.BALANCED).images
    assert not np.array_equal(a[0], b[0])
    single = generate(model, control_map, dataclasses.replace(p, strength=1.0)).images
    assert all(np.array_equal(x, y) for x, y in zip(b, single))
    assert generate_multi(model, units, p, "cfg_resolution_weighting").images[0].shape == (SIZE, SIZE, 3)
    with pytest.raises(GenerationInputError, match="control mode must be one of"):
        generate_multi(model, units, p, "strong")
    with pytest.raises(GenerationInputError, match="start < end"):
        generate_multi(model, [dataclasses.replace(units[0], start=0.5, end=0.5)], p, ControlMode.BALANCED)
    with pytest.raises(GenerationInputError, match="differ in size"):
        generate_multi(model, [units[0], dataclasses.replace(units[1], control_map=np.zeros((SIZE, 2 * SIZE, 3), np.uint8))], p, ControlMode.BALANCED)


# ----------------------------------------------------------------------------- samplers

@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_generates_and_cancels(model, control_map, sampler):
    """Each sampler of the table runs through `generate` (guess mode too), the same seed gives the same images,
    and the step callback sees every step and can cancel."""
    seen = []
    p = params(sampler=sampler, steps=3, num_samples=1)
    first = generate(model, control_map, p, callback=lambda i, total, x, x0: seen.append((i, total))).images
    assert seen == [(0, 3), (1, 3), (2, 3)]
    assert np.array_equal(first[0], generate(model, control_map, p).images[0])
    assert generate(model, control_map, params(sampler=sampler, steps=3, num_samples=1, guess_mode=True)).images
    with pytest.raises(SamplingCancelled):
        generate(model, control_map, p, callback=lambda i, total, x, x0: i < 1)


def test_samplers_differ_and_bad_sampler_settings_are_refused(model, control_map):
    images = {s: generate(model, control_map, params(sampler=s, steps=4, num_samples=1)).images[0] for s in ("ddim", "euler")}
    assert not np.array_equal(images["ddim"], images["euler"])
    with pytest.raises(GenerationInputError, match="sampler must be one of"):
        params(sampler="plms")
    with pytest.raises(GenerationInputError, match="at most 50 with the LCM sampler"):
        params(sampler="lcm", steps=51)


def test_free_heap_is_released_before_the_decode(model, control_map, monkeypatch):
    """On the CPU the run's memory peak is the VAE decode; the heap the sampler freed goes back to the system
    just before it, not after."""
    import cldm.pipeline

    events = []
    monkeypatch.setattr(cldm.pipeline, "release_free_memory", lambda: events.append("release"))
    hook = model.first_stage_model.decoder.register_forward_pre_hook(lambda *_: events.append("decode"))
    try:
        generate(model, control_map, params(steps=1),
                 callback=lambda i, *_: events.append("step") or True)
    finally:
        hook.remove()
    assert events == ["step", "release", "decode"]
