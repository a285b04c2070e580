"""DDIM schedule and update against diffusers' DDIMScheduler; CFG batching rules; cancelling."""
import pytest
import torch
from diffusers import DDIMScheduler

from cldm.ddim import SamplingCancelled, guided_model_fn, make_ddim_timesteps, sample_ddim


def sd15_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
    )


def alphas_cumprod_f64() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic, x- and t-dependent stand-in for a noise predictor."""
    return torch.tanh(x * 0.7 + x.flip(-1) * 0.2) + (t.float() / 1000).view(-1, 1, 1, 1)


@pytest.mark.parametrize("steps", [10, 20, 25, 50])
def test_schedule_matches_diffusers(steps):
    scheduler = sd15_scheduler()
    scheduler.set_timesteps(steps)
    assert make_ddim_timesteps(steps).flip(0).tolist() == scheduler.timesteps.tolist()


def test_schedule_quirk_when_steps_do_not_divide_1000():
    ts = make_ddim_timesteps(30)
    assert len(ts) == 31 and ts[0] == 1 and ts[1] == 34 and ts[-1] == 991
    assert len(make_ddim_timesteps(7)) == 8
    # The original indexes past the schedule (t = 1000) for these S; that step is dropped.
    for steps in (3, 9, 27, 36, 37):
        assert make_ddim_timesteps(steps).max() < 1000
    assert make_ddim_timesteps(3).tolist() == [1, 334, 667]
    assert all(make_ddim_timesteps(s).max() < 1000 for s in range(1, 101))
    with pytest.raises(ValueError):
        make_ddim_timesteps(0)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_trajectory_matches_diffusers(eta):
    steps = 10
    scheduler = sd15_scheduler()
    scheduler.set_timesteps(steps)
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    ours, theirs = [], []
    g = torch.Generator().manual_seed(1)
    sample_ddim(toy_eps, x_t, make_ddim_timesteps(steps), alphas_cumprod_f64(), eta, g,
                lambda i, n, x, x0: ours.append(x.clone()))
    g = torch.Generator().manual_seed(1)
    x = x_t.clone()
    for t in scheduler.timesteps:
        eps = toy_eps(x, t.repeat(2))
        x = scheduler.step(eps, t, x, eta=eta, generator=g).prev_sample
        theirs.append(x)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_eta_noise_is_seeded():
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    run = lambda seed: sample_ddim(toy_eps, x_t, make_ddim_timesteps(5), alphas_cumprod_f64(), 1.0,
                                   torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


def test_callback_per_step_and_cancel():
    calls = []
    ts = make_ddim_timesteps(4)
    sample_ddim(toy_eps, torch.zeros(1, 4, 4, 4), ts, alphas_cumprod_f64(), callback=lambda i, n, x, x0: calls.append((i, n)))
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4)]
    with pytest.raises(SamplingCancelled) as info:
        sample_ddim(toy_eps, torch.zeros(1, 4, 4, 4), ts, alphas_cumprod_f64(), callback=lambda i, n, x, x0: i < 1)
    assert info.value.step == 2 and info.value.total == 4


class RecordingDenoiser:
    """ε depends on the text and (when present) the hint, so wrong pairing shows."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        out = x * torch.cat(cond["c_crossattn"], 1).mean((1, 2)).view(-1, 1, 1, 1)
        if cond["c_concat"] is not None:
            out = out + torch.cat(cond["c_concat"], 1).mean((1, 2, 3)).view(-1, 1, 1, 1)
        return out


def make_conds(n):
    g = torch.Generator().manual_seed(5)
    hint = torch.rand(n, 3, 16, 16, generator=g)
    cond = {"c_concat": [hint], "c_crossattn": [torch.randn(n, 7, 6, generator=g)]}
    uncond = {"c_concat": [hint], "c_crossattn": [torch.randn(n, 7, 6, generator=g)]}
    return cond, uncond


def test_cfg_batched_equals_two_calls():
    cond, uncond = make_conds(3)
    x, t = torch.randn(3, 4, 4, 4), torch.full((3,), 11)
    denoiser = RecordingDenoiser()
    batched = guided_model_fn(denoiser, cond, uncond, 7.5)(x, t)
    assert denoiser.batches == [6]
    e_c, e_u = denoiser(x, t, cond), denoiser(x, t, uncond)
    torch.testing.assert_close(batched, e_u + 7.5 * (e_c - e_u))


def test_cfg_two_calls_when_structures_differ():
    cond, uncond = make_conds(2)
    uncond = {**uncond, "c_concat": None}  # guess mode
    denoiser = RecordingDenoiser()
    x, t = torch.randn(2, 4, 4, 4), torch.full((2,), 11)
    out = guided_model_fn(denoiser, cond, uncond, 3.0)(x, t)
    assert denoiser.batches == [2, 2]
    e_c, e_u = denoiser(x, t, cond), denoiser(x, t, uncond)
    torch.testing.assert_close(out, e_u + 3.0 * (e_c - e_u))


def test_cfg_scale_one_runs_conditional_only():
    cond, uncond = make_conds(2)
    denoiser = RecordingDenoiser()
    guided_model_fn(denoiser, cond, uncond, 1.0)(torch.randn(2, 4, 4, 4), torch.full((2,), 11))
    assert denoiser.batches == [2]


@pytest.mark.parametrize("guess", [False, True])
def test_ddim_cfg_trajectory_matches_diffusers(guess):
    """Our DDIMSampler over ControlLDM.apply_model vs diffusers' ControlNetModel + UNet2DConditionModel +
    DDIMScheduler on the same (converted) weights, control residuals scaled per block by hand."""
    from cldm.ddim import DDIMSampler
    from tests.tiny import random_model, to_diffusers

    model, sd = random_model(seed=3)
    ref = to_diffusers(sd)
    n, steps, scale = 2, 10, 7.0
    g = torch.Generator().manual_seed(11)
    hint = torch.rand(n, 3, 64, 64, generator=g)
    c, uc = torch.randn(n, 77, 32, generator=g), torch.randn(n, 77, 32, generator=g)
    x_t = torch.randn(n, 4, 8, 8, generator=g)
    scales = [0.8 * 0.825 ** (12 - i) for i in range(13)] if guess else [0.8] * 13
    scales = scales[-len(model.control_scales):]
    model.control_scales = scales

    ours = []
    cond = {"c_concat": [hint], "c_crossattn": [c]}
    uncond = {"c_concat": None if guess else [hint], "c_crossattn": [uc]}
    DDIMSampler(model).sample(steps, n, (4, 8, 8), cond, unconditional_guidance_scale=scale,
                              unconditional_conditioning=uncond, x_T=x_t,
                              callback=lambda i, total, x, x0: ours.append(x.clone()))

    scheduler = sd15_scheduler()
    scheduler.set_timesteps(steps)

    def eps(x, t, context, control):
        if not control:
            return ref.unet(x, t, encoder_hidden_states=context).sample
        down, mid = ref.controlnet(x, t, encoder_hidden_states=context, controlnet_cond=hint,
                                   conditioning_scale=1.0, return_dict=False)
        down = [d * s for d, s in zip(down, scales[:-1])]
        return ref.unet(x, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid * scales[-1]).sample

    x = x_t.clone()
    with torch.no_grad():
        for step, t in enumerate(scheduler.timesteps):
            e_c, e_u = eps(x, t, c, True), eps(x, t, uc, not guess)
            x = scheduler.step(e_u + scale * (e_c - e_u), t, x).prev_sample
            assert (ours[step] - x).abs().max() <= 1e-4 * x.abs().max(), step


def test_batched_cfg_equals_two_calls_on_controlldm():
    from tests.tiny import random_model

    model = random_model(seed=2)[0]
    g = torch.Generator().manual_seed(0)
    hint = torch.rand(2, 3, 64, 64, generator=g)
    cond = {"c_concat": [hint], "c_crossattn": [torch.randn(2, 77, 32, generator=g)]}
    uncond = {"c_concat": [hint], "c_crossattn": [torch.randn(2, 77, 32, generator=g)]}
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([901, 901])
    with torch.no_grad():
        batched = guided_model_fn(model.apply_model, cond, uncond, 5.0)(x, t)
        e_c, e_u = model.apply_model(x, t, cond), model.apply_model(x, t, uncond)
    torch.testing.assert_close(batched, e_u + 5.0 * (e_c - e_u), rtol=1e-5, atol=1e-5)
