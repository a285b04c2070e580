"""ControlNet 1.1 engine parts: global average pooling and the conditional-only mode (shuffle), masked sampling
(inpaint) with every sampler, img2img (tile) starts, and their pipeline entry points (`init=`).

The tiny model has random non-zero weights (zero convolutions included), so control shows in every output. What
the UNet receives is recorded with a forward pre-hook on `model.model.diffusion_model`.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from cldm.config import ConfigError, parse_config
from cldm.control import Control, ControlMode, ControlUnit, block_weights, control_residuals
from cldm.control_bank import ControlBank
from cldm.ddim import guided_model_fn, initial_noise, make_ddim_timesteps, model_alphas_cumprod, sample_ddim
from cldm.img2img import LatentMask, composite, encode_image, hint_mask, latent_keep_mask, vae_pixels
from cldm.model import build_model
from cldm.pipeline import GenerationInputError, GenerationParams, Img2Img, Inpaint, generate, generate_multi, hint_tensor
from cldm.samplers import SAMPLERS, ddim_img2img, karras_noise_levels, noise_levels, tail_img2img
from cldm.shared_model import SharedModel
from tests.tiny import TINY_YAML, random_model
from weights.table import WEIGHTS

SIZE = 64  # image side; latents 8×8
SHAPE = (2, 4, 8, 8)
AC = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)


@pytest.fixture(scope="module")
def model():
    return random_model(seed=11)[0]


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def mask():
    """Soft mask, 1 = repaint: a hard 0/1 block (latent cells rows 2..5, columns 1..4) plus a soft ramp column."""
    m = np.zeros((SIZE, SIZE), np.float32)
    m[16:48, 8:40] = 1.0
    m[:, 56:] = np.linspace(0.2, 0.8, SIZE, dtype=np.float32)[:, None]
    return m


def params(**overrides) -> GenerationParams:
    base = dict(prompt="a house", num_samples=2, steps=3, seed=5, scale=6.0)
    return GenerationParams(**{**base, **overrides})


@contextlib.contextmanager
def unet_calls(model):
    """Records (x, t, context, control) of every call of the SD UNet."""
    calls = []

    def hook(module, args):
        x, t, context, control = args[:4]
        calls.append((x.clone(), t.clone(), context.clone(), control))

    handle = model.model.diffusion_model.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


# --- shuffle: global average pooling, conditional-only control -----------------------------------------------------


def yaml_dict(**model_params) -> dict:
    import yaml

    data = yaml.safe_load(TINY_YAML.read_text())
    data["model"]["params"].update(model_params)
    return data


def test_global_average_pooling_is_read_from_the_yaml():
    assert parse_config(yaml_dict()).control.global_average_pooling is False
    cfg = parse_config(yaml_dict(global_average_pooling=True))
    assert cfg.control.global_average_pooling is True
    assert build_model(cfg).control_model.global_average_pooling is True
    with pytest.raises(ConfigError, match="global_average_pooling"):
        parse_config(yaml_dict(global_average_pooling="yes"))


def test_pooled_residuals_are_the_per_channel_means(model):
    g = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, SIZE, SIZE, generator=g)
    t, context = torch.tensor([10, 700]), torch.randn(2, 77, 32, generator=g)
    scales = [0.5, 1.0, 1.5, 0.8, 1.2]
    net = model.control_model
    with torch.no_grad():
        plain = control_residuals([Control(net, hint, scales)], x, t, context)
        net.global_average_pooling = True
        try:
            pooled = control_residuals([Control(net, hint, scales)], x, t, context)
            # A pooled net next to an unpooled one: the pooled residuals broadcast over the other's.
            mixed = control_residuals([Control(net, hint, scales), Control(random_model(seed=2)[0].control_model,
                                                                           hint, scales)], x, t, context)
            eps = model.eps(x, t, context, [Control(net, hint, scales)])
        finally:
            net.global_average_pooling = False
        other = control_residuals([Control(random_model(seed=2)[0].control_model, hint, scales)], x, t, context)
        expected_eps = model.model(x, t, context, [r.mean((2, 3), keepdim=True).expand_as(r) for r in plain])
    assert len(pooled) == len(plain) == 5
    for p, r in zip(pooled, plain):
        assert p.shape == (*r.shape[:2], 1, 1)
        torch.testing.assert_close(p, r.mean(dim=(2, 3), keepdim=True), rtol=0, atol=1e-6)
        assert p.abs().max() > 0
    for m, p, o in zip(mixed, pooled, other):
        torch.testing.assert_close(m, p + o, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eps, expected_eps, rtol=1e-5, atol=1e-5)


def test_conditional_mode_leaves_the_unconditional_branch_plain(model, image):
    assert block_weights(ControlMode.CONDITIONAL, 0.7, [torch.zeros(1, 1, s, s) for s in (8, 8, 4, 4, 4)]) == [0.7] * 5
    assert not ControlMode.CONDITIONAL.controls_unconditional
    p = params(n_prompt="ugly", strength=0.8)
    with unet_calls(model) as calls:
        result = generate(model, image, p, mode=ControlMode.CONDITIONAL)
    uncond_text = model.get_learned_conditioning(["ugly"] * 2)
    cond_text = model.get_learned_conditioning(["a house, " + p.a_prompt] * 2)
    # Two UNet calls per step, conditional first (with control), then unconditional (without).
    assert len(calls) == 2 * 3 and len(result.images) == 2
    for k, (x, t, context, control) in enumerate(calls):
        assert x.shape[0] == 2
        if k % 2 == 0:
            assert control is not None and len(control) == 5 and torch.equal(context, cond_text)
        else:
            assert control is None and torch.equal(context, uncond_text)
    # Balanced control (the default) controls both branches in one batched call.
    with unet_calls(model) as calls:
        generate(model, image, p)
    assert len(calls) == 3 and all(c[0].shape[0] == 4 and c[3] is not None for c in calls)
    with unet_calls(model) as calls:
        generate(model, image, p, mode="conditional")
    assert [c[3] is None for c in calls[:2]] == [False, True]


def test_shuffle_weights_switch_pooling_on_activation():
    assert [k for k, w in WEIGHTS.items() if w.global_average_pooling] == ["cn11_shuffle_fp16", "cn11_shuffle"]
    shared = SharedModel(tiny=True, device="cpu")
    with shared.activate("cn11_shuffle") as model:
        assert model.control_model.global_average_pooling is True
    with shared.activate("cn11_canny") as model:
        assert model.control_model.global_average_pooling is False
    with shared.activate("cn11_shuffle") as model:  # from the cache
        assert model.control_model.global_average_pooling is True
    bank = ControlBank(shared)
    with bank.hold(["cn11_shuffle", "cn11_depth"]) as (_, nets):
        assert nets["cn11_shuffle"].global_average_pooling is True and nets["cn11_depth"].global_average_pooling is False
    with bank.hold(["cn11_depth", "cn11_shuffle"]) as (model, nets):
        assert nets["cn11_shuffle"].global_average_pooling is True and nets["cn11_depth"].global_average_pooling is False


# --- inpaint --------------------------------------------------------------------------------------------------------


def test_inpaint_pieces(image, mask):
    inside = mask > 0.5
    hint = hint_tensor(image, 2, torch.device("cpu"), torch.float32, hint_mask(mask))
    assert hint.shape == (2, 3, SIZE, SIZE)
    h = hint.permute(0, 2, 3, 1).numpy()
    assert (h[:, inside] == -1.0).all()
    assert (h[:, ~inside] == (image.astype(np.float32) / 255.0)[~inside]).all()
    assert torch.equal(hint_tensor(image, 2, torch.device("cpu"), torch.float32),
                       torch.from_numpy(image).float().div(255).permute(2, 0, 1)[None].repeat(2, 1, 1, 1))

    keep = latent_keep_mask(mask)
    assert keep.shape == (8, 8) and keep.dtype == np.float32
    expected = 1.0 - mask.reshape(8, 8, 8, 8).mean(axis=(1, 3))  # area resize by 8 = the 8×8 block means
    np.testing.assert_allclose(keep, expected, atol=1e-6)
    assert (keep[2:6, 1:5] == 0).all() and (keep[:2, :7] == 1).all()

    pixels = vae_pixels(np.array([[[0, 127, 255]]], np.uint8))
    assert pixels.shape == (1, 3, 1, 1) and torch.allclose(pixels.flatten(), torch.tensor([-1.0, 0.0, 128 / 127]))

    decoded = np.full((2, SIZE, SIZE, 3), 300.0, np.float32)  # ×127.5 + 127.5, not clipped yet
    decoded[1] = -40.0
    out = composite(decoded, image, mask)
    assert out.shape == (2, SIZE, SIZE, 3) and out.dtype == np.uint8
    kept = mask == 0
    assert (out[:, kept] == image[kept]).all()
    assert (out[0, mask == 1] == 255).all() and (out[1, mask == 1] == 0).all()
    y, x = 40, 60  # soft: blended first, clipped after
    m = mask[y, x]
    assert (out[0, y, x] == np.clip(300 * m + image[y, x] * (1 - m), 0, 255).astype(np.uint8)).all()


class RecordingMask(LatentMask):
    """A LatentMask that records each re-noised image latent it pastes (and the level)."""

    def __init__(self, z0, keep):
        super().__init__(z0, keep)
        object.__setattr__(self, "drawn", [])

    def noised(self, alpha_bar, generator):
        out = super().noised(alpha_bar, generator)
        self.drawn.append((alpha_bar, out))
        return out


def vp_level(name: str, t: torch.Tensor) -> float:
    """ᾱ of the level a sampler's latent is at when the model sees timestep t."""
    if t.is_floating_point():  # Euler: σ interpolated linearly between training timesteps
        sigmas, lo = noise_levels(AC), int(t.floor())
        hi = min(lo + 1, 999)
        s = float(sigmas[lo] + (float(t) - lo) * (sigmas[hi] - sigmas[lo]))
        return 1 / (1 + s * s)
    return float(AC[int(t)])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_masked_sampling_keeps_the_noised_image_every_step(name):
    """Before each model call the latent equals q_sample(z0, t) where keep = 1, the previous step's result where
    keep = 0, and their soft mix between; the re-noising draws come from the sampler's generator."""
    sampler = SAMPLERS[name]
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(SHAPE, generator=g)
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :, :3] = 1.0
    keep[..., :, 3] = 0.25
    rec = RecordingMask(z0, keep)
    seen, after = [], []

    def model_fn(x, t):
        seen.append((x.clone(), t[0].clone()))
        return 0.9 * x + 0.1 * torch.sin(x + t[0].float() / 100)

    steps = 4
    ts = sampler.schedule(steps, AC)
    x_t = initial_noise(SHAPE, torch.Generator().manual_seed(2), "cpu")
    out = sampler.sample(model_fn, x_t, ts, AC, 1.0, torch.Generator().manual_seed(3),
                         lambda i, n, x, x0: after.append(x.clone()), mask=rec)
    assert len(seen) == len(rec.drawn) == len(ts) and torch.isfinite(out).all()
    start = x_t
    if sampler.sigma_space:  # the Euler samplers start from σ_max·x_T, i.e. the VP latent x_T·σ/√(1+σ²)
        s = float(_sigma_max(ts))
        start = x_t * s / math.sqrt(1 + s * s)
    for k, ((x, t), (alpha_bar, noised)) in enumerate(zip(seen, rec.drawn)):
        if name == "dpmpp_2m_karras":  # the solver's exact Karras σ; the model sees them rounded to timesteps
            s = float(karras_noise_levels(steps, AC)[k])
            assert alpha_bar == pytest.approx(1 / (1 + s * s), rel=1e-9)
        else:
            assert alpha_bar == pytest.approx(vp_level(name, t), rel=1e-9, abs=1e-12)
        previous = start if k == 0 else after[k - 1]
        torch.testing.assert_close(x, noised * keep + previous * (1 - keep), rtol=1e-5, atol=1e-5)
        assert torch.allclose(x[..., :3], noised[..., :3], rtol=1e-5, atol=1e-5)
        # The kept part is really the image latent at that level: its mean tracks √ᾱ·z0.
        residual = (noised - math.sqrt(alpha_bar) * z0) / math.sqrt(1 - alpha_bar)
        assert abs(float(residual.std()) - 1.0) < 0.25
    # Without a mask the sampler is unchanged (same draws, same output) and the mask changes the result.
    plain = sampler.sample(model_fn, x_t, ts, AC, 1.0, torch.Generator().manual_seed(3))
    again = sampler.sample(model_fn, x_t, ts, AC, 1.0, torch.Generator().manual_seed(3), mask=None)
    assert torch.equal(plain, again) and not torch.allclose(plain, out)


def _sigma_max(ts: torch.Tensor) -> float:
    sigmas = noise_levels(AC)
    t = float(ts.max())
    lo = int(math.floor(t))
    hi = min(lo + 1, 999)
    return float(sigmas[lo] + (t - lo) * (sigmas[hi] - sigmas[lo]))


def test_ddim_mask_draw_order_matches_the_original():
    """DDIM with eta 1: per step first the q_sample draw, then the step's own; replayed from the seed."""
    g = torch.Generator().manual_seed(1)
    z0, x_t = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    keep = (torch.rand(1, 1, 8, 8, generator=g) > 0.5).float()
    ts = make_ddim_timesteps(3)
    rec = RecordingMask(z0, keep)
    sample_ddim(lambda x, t: 0.5 * x, x_t, ts, AC, 1.0, torch.Generator().manual_seed(9), mask=rec)
    replay = torch.Generator().manual_seed(9)
    for (alpha_bar, noised), t in zip(rec.drawn, ts.flip(0)):
        z = torch.randn(SHAPE, generator=replay)
        torch.randn(SHAPE, generator=replay)  # the step's noise
        assert alpha_bar == float(AC[int(t)])
        torch.testing.assert_close(noised, math.sqrt(alpha_bar) * z0 + math.sqrt(1 - alpha_bar) * z)


def original_inpaint(model, image, mask, p: GenerationParams) -> list[np.ndarray]:
    """The 1.1 inpaint app's `process` spelled out with the original's interface (apply_model, control_scales)."""
    n = p.num_samples
    control = image.astype(np.float32).copy()
    control[mask > 0.5] = -255.0
    control = torch.from_numpy(control / 255.0).permute(2, 0, 1)[None].repeat(n, 1, 1, 1)
    cond = {"c_concat": [control], "c_crossattn": [model.get_learned_conditioning([p.prompt + ", " + p.a_prompt] * n)]}
    uncond = {"c_concat": [control], "c_crossattn": [model.get_learned_conditioning([p.n_prompt] * n)]}
    model.control_scales = [p.strength] * 5
    g = torch.Generator().manual_seed(p.seed)
    img = torch.from_numpy(image.astype(np.float32) / 127.0 - 1.0).permute(2, 0, 1)[None].repeat(n, 1, 1, 1)
    x0 = model.get_first_stage_encoding(model.encode_first_stage(img), g)
    x_t = torch.randn((n, 4, 8, 8), generator=g)
    import cv2
    keep = 1.0 - torch.from_numpy(cv2.resize(mask, (8, 8), interpolation=cv2.INTER_AREA))[None, None]
    ts, ac = make_ddim_timesteps(p.steps), model_alphas_cumprod(model)

    class Blend(LatentMask):
        def blend(self, x, alpha_bar, generator):  # the original's q_sample blend, spelled out
            t = int(ac.sub(alpha_bar).abs().argmin())
            noise = torch.randn(x.shape, generator=generator)
            orig = model.sqrt_alphas_cumprod[t] * self.z0 + model.sqrt_one_minus_alphas_cumprod[t] * noise
            return orig * self.keep + (1.0 - self.keep) * x

    fn = guided_model_fn(lambda x, t, c: model.apply_model(x, t, c), cond, uncond, p.scale)
    try:
        samples = sample_ddim(fn, x_t, ts, ac, p.eta, g, mask=Blend(x0, keep))
    finally:
        model.control_scales = [1.0] * 5
    x = (model.decode_first_stage(samples).permute(0, 2, 3, 1) * 127.5 + 127.5).numpy()
    x = x * mask[None, :, :, None] + image.astype(np.float32)[None] * (1.0 - mask[None, :, :, None])
    return list(x.clip(0, 255).astype(np.uint8))


def test_inpaint_generate_equals_the_original_process(model, image, mask):
    p = params(eta=1.0, strength=0.9)
    with unet_calls(model) as calls:
        hints = []
        handle = model.control_model.register_forward_pre_hook(lambda m, a: hints.append(a[1].clone()))
        try:
            result = generate(model, image, p, init=Inpaint(image, mask))
        finally:
            handle.remove()
    with torch.no_grad():
        expected = original_inpaint(model, image, mask, p)
    for a, b in zip(result.images, expected):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    inside = mask > 0.5
    h = hints[0].permute(0, 2, 3, 1).numpy()
    assert (h[:, inside] == -1.0).all() and np.allclose(h[:, ~inside], (image / 255.0)[~inside])
    assert len(calls) == 3
    kept = mask == 0
    assert all((im[kept] == image[kept]).all() for im in result.images)
    assert any((im[mask == 1] != image[mask == 1]).any() for im in result.images)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_inpaint_works_with_every_sampler(model, image, mask, name):
    p = params(sampler=name, steps=2, num_samples=1, scale=1.0 if name == "lcm" else 5.0)
    plain = generate(model, image, p).images[0]
    result = generate(model, image, p, init=Inpaint(image, mask)).images[0]
    assert result.shape == (SIZE, SIZE, 3) and result.dtype == np.uint8
    kept = mask == 0
    assert (result[kept] == image[kept]).all() and not (plain[kept] == image[kept]).all()
    assert (result[mask == 1] != image[mask == 1]).any()
    assert np.array_equal(result, generate(model, image, p, init=Inpaint(image, mask)).images[0])


def test_inpaint_unit_in_generate_multi(model, image, mask):
    """generate_multi uses the units' hints as given: the inpaint unit carries its own hint_mask."""
    p = params(num_samples=1, steps=2)
    unit = ControlUnit(model.control_model, image, 1.0, hint_mask=hint_mask(mask))
    multi = generate_multi(model, [unit], p, "balanced", init=Inpaint(image, mask)).images[0]
    single = generate(model, image, p, init=Inpaint(image, mask)).images[0]
    assert np.array_equal(multi, single)
    with pytest.raises(GenerationInputError, match="hint mask"):
        generate_multi(model, [ControlUnit(model.control_model, image, 1.0, hint_mask=mask)], p, "balanced")


# --- img2img (tile) -------------------------------------------------------------------------------------------------


def test_ddim_img2img_follows_the_original_numbers():
    ts = SAMPLERS["ddim"].schedule(32, AC)
    assert len(ts) == 33 and int(ts[-1]) == 993
    begin = ddim_img2img(32, 1.0, ts, AC)
    assert begin.alpha_bar == float(AC[962])  # noised to t = 962 (DDIM index t_enc = 31)
    assert begin.timesteps.flip(0).tolist() == list(range(931, 0, -31)) and len(begin.timesteps) == 31
    assert math.sqrt(begin.alpha_bar) == pytest.approx(0.085, abs=0.001)  # the input still shows through
    half = ddim_img2img(20, 0.5, SAMPLERS["ddim"].schedule(20, AC), AC)  # t_enc = 10
    assert half.alpha_bar == float(AC[501]) and half.timesteps.flip(0).tolist() == list(range(451, 0, -50))
    assert len(ddim_img2img(20, 0.33, SAMPLERS["ddim"].schedule(20, AC), AC).timesteps) == 6
    assert len(ddim_img2img(1, 1.0, SAMPLERS["ddim"].schedule(1, AC), AC).timesteps) == 0  # t_enc = 0: no step
    with pytest.raises(ValueError):
        ddim_img2img(20, 0.0, SAMPLERS["ddim"].schedule(20, AC), AC)


def test_tail_img2img_visits_the_low_noise_end():
    ts = SAMPLERS["dpmpp_2m"].schedule(10, AC)
    begin = tail_img2img(10, 0.5, ts, AC)
    assert begin.timesteps.tolist() == ts[:5].tolist() and begin.alpha_bar == pytest.approx(float(AC[int(ts[4])]))
    assert len(tail_img2img(10, 0.01, ts, AC).timesteps) == 1 and torch.equal(tail_img2img(10, 1.0, ts, AC).timesteps, ts)
    assert SAMPLERS["dpmpp_2m_karras"].img2img is None
    assert all(s.img2img is not None for n, s in SAMPLERS.items() if n != "dpmpp_2m_karras")


def test_tile_generate_noises_to_962_and_visits_931_to_1(model, image):
    p = params(steps=32, num_samples=1, eta=1.0)
    with unet_calls(model) as calls:
        generate(model, image, p, init=Img2Img(image, 1.0))
    seen = [int(c[1][0]) for c in calls]
    assert seen == list(range(931, 0, -31)) and len(seen) == 31
    # The first UNet input is the image latent noised to t = 962: posterior sample, then the noise, from the seed.
    g = torch.Generator().manual_seed(p.seed)
    with torch.no_grad():
        z0 = encode_image(model, image, 1, g)
    eps = torch.randn((1, 4, 8, 8), generator=g)
    a = float(AC[962])
    torch.testing.assert_close(calls[0][0][:1], math.sqrt(a) * z0 + math.sqrt(1 - a) * eps, rtol=1e-5, atol=1e-5)
    # Denoise 0.5 with 20 steps: noised to t = 501, 10 steps from 451.
    with unet_calls(model) as calls:
        generate(model, image, params(steps=20, num_samples=1), init=Img2Img(image, 0.5))
    assert [int(c[1][0]) for c in calls] == list(range(451, 0, -50))


def test_encode_image_draws_one_posterior_sample_per_image(model, image):
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        z = encode_image(model, image, 3, g)
        posterior = model.encode_first_stage(vae_pixels(image))
    noise = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(z, model.scale_factor * (posterior.mean + posterior.std * noise), rtol=1e-6, atol=1e-6)
    assert not torch.equal(z[0], z[1])


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "dpmpp_2m_karras"])
def test_img2img_with_every_sampler(model, image, name):
    """Each sampler visits its img2img timesteps and its first UNet input is the image latent noised to the start
    level: √ᾱ·z0 + √(1−ᾱ)·ε, z0 the posterior sample and ε the next draw from the seed."""
    p = params(sampler=name, steps=4, num_samples=1, scale=1.0 if name == "lcm" else 5.0)
    sampler = SAMPLERS[name]
    for denoise in (0.5, 1.0):
        begin = sampler.img2img(4, denoise, sampler.schedule(4, AC), AC)
        with unet_calls(model) as calls:
            result = generate(model, image, p, init=Img2Img(image, denoise)).images[0]
        assert result.shape == (SIZE, SIZE, 3)
        assert [float(c[1][0]) for c in calls] == begin.timesteps.flip(0).tolist()
        g = torch.Generator().manual_seed(p.seed)
        with torch.no_grad():
            z0 = encode_image(model, image, 1, g)
        eps, a = torch.randn((1, 4, 8, 8), generator=g), begin.alpha_bar
        torch.testing.assert_close(calls[0][0][:1], math.sqrt(a) * z0 + math.sqrt(1 - a) * eps, rtol=1e-5, atol=1e-5)


def test_karras_sampler_refuses_img2img(model, image):
    with pytest.raises(GenerationInputError, match="DPM\\+\\+ 2M Karras sampler cannot start from an image"):
        generate(model, image, params(sampler="dpmpp_2m_karras"), init=Img2Img(image, 0.5))


@pytest.mark.parametrize("name", ["euler", "euler_a", "dpmpp_2m", "unipc"])
def test_img2img_start_matches_diffusers(name):
    """The diffusers img2img loop (timesteps[t_start:], begin index, add_noise at the first) on the same model."""
    from tests.test_samplers import MODEL, REFERENCES, SD15_SCHEDULER_CONFIG, VE_SPACE, rel_err

    steps, denoise = 10, 0.6
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    sampler = SAMPLERS[name]
    begin = sampler.img2img(steps, denoise, sampler.schedule(steps, AC), AC)
    ours = sampler.sample(MODEL, sampler.start(z0, noise, begin, AC), begin.timesteps, AC, 0.0,
                          torch.Generator().manual_seed(7))

    cls, options = REFERENCES[name]
    scheduler = cls.from_config(SD15_SCHEDULER_CONFIG, **options)
    scheduler.set_timesteps(steps)
    t_start = steps - int(steps * denoise)
    timesteps = scheduler.timesteps[t_start:]
    scheduler.set_begin_index(t_start)
    x = scheduler.add_noise(z0, noise, timesteps[:1])
    ref_g = torch.Generator().manual_seed(7)
    for t in timesteps:
        eps = MODEL(scheduler.scale_model_input(x, t), t.reshape(1).repeat(SHAPE[0]))
        extra = {"generator": ref_g} if name == "euler_a" else {}
        x = scheduler.step(eps, t, x, **extra).prev_sample
    assert torch.equal(begin.timesteps.flip(0), timesteps.to(begin.timesteps.dtype))
    err = rel_err(ours, x)
    print(f"{name} img2img vs diffusers: rel err {err:.1e}")
    assert err <= 1e-4
    assert name not in VE_SPACE or sampler.sigma_space


# --- validation -----------------------------------------------------------------------------------------------------


def test_bad_init_inputs_are_refused(model, image, mask):
    p = params(num_samples=1, steps=1)
    cases = [
        (Img2Img(image, 0.0), "denoise"),
        (Img2Img(image, 1.5), "denoise"),
        (Img2Img(image, True), "denoise"),
        (Img2Img(np.zeros((128, 64, 3), np.uint8), 0.5), "same size"),
        (Img2Img(image.astype(np.float32), 0.5), "uint8"),
        (Inpaint(image, mask[:32]), "inpaint mask"),
        (Inpaint(image, (mask * 255).astype(np.uint8)), "inpaint mask"),
        (Inpaint(image, mask * 2), r"\[0, 1\]"),
        ("image", "Img2Img or an Inpaint"),
    ]
    for init, message in cases:
        with pytest.raises(GenerationInputError, match=message):
            generate(model, image, p, init=init)
    with pytest.raises(GenerationInputError):
        generate(model, image, p, mode="sideways")


def test_params_accept_the_large_resolution_and_text_options():
    from cldm import limits

    assert limits.LARGE_IMAGE_RESOLUTION == limits.Limit(512, 256, 2048, 64)
    assert GenerationParams("x", image_resolution=2048, prompt_chunks=3, clip_skip=2).clip_skip == 2
    for bad in (dict(image_resolution=2112), dict(prompt_chunks=2), dict(prompt_chunks=True), dict(clip_skip=3),
                dict(clip_skip=0), dict(clip_skip=1.0)):
        with pytest.raises(GenerationInputError):
            GenerationParams("x", **bad)
