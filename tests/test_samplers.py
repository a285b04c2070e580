"""Samplers of `cldm.samplers` against the diffusers schedulers a user gets from the SD 1.5 scheduler config.

The stand-in noise predictor is a tiny fixed random conv net with a sinusoidal timestep embedding, so that a
wrong x scale, a wrong t or a wrong coefficient all change its output.
"""
import inspect
import math

import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LCMScheduler, UniPCMultistepScheduler)

from cldm.ddim import SamplingCancelled, initial_noise
from cldm.samplers import SAMPLERS, Sampler, karras_timesteps

SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False,
    "skip_prk_steps": True, "trained_betas": None,
}
REFERENCES = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
}
VE_SPACE = {"euler", "euler_a"}  # diffusers keeps these latents as x0 + σ·ε, not in the UNet's VP space
DETERMINISTIC = ["ddim", "euler", "dpmpp_2m", "dpmpp_2m_karras", "unipc"]
STOCHASTIC = ["euler_a", "lcm"]
SHAPE = (2, 4, 8, 8)
TOL = 1e-4


def alphas_cumprod_f64() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


AC = alphas_cumprod_f64()


class TinyEps(torch.nn.Module):
    """ε(x, t) = √(1−ᾱ(t))·x + 0.2·conv(silu(conv(x) + W·emb(t))), fixed random weights.

    The first term is the exact noise predictor for x0 ~ N(0, I), which keeps every sampler's latents of order
    one; the small conv net makes ε nonlinear and, through a sinusoidal embedding whose top frequency is 1, shows a
    timestep off by a fraction of a step. ᾱ(t) is interpolated linearly for fractional t."""

    def __init__(self, seed: int = 1234, channels: int = 4, hidden: int = 16, emb_dim: int = 32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(hidden, channels, 3, 3, generator=g) / math.sqrt(channels * 9)
        self.b1 = torch.randn(hidden, generator=g) * 0.1
        self.w_emb = torch.randn(hidden, emb_dim, generator=g) / math.sqrt(emb_dim)
        self.w2 = torch.randn(channels, hidden, 3, 3, generator=g) / math.sqrt(hidden * 9)
        self.freqs = torch.exp(-math.log(1000.0) * torch.arange(emb_dim // 2, dtype=torch.float64) / (emb_dim // 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],)
        t = t.to(torch.float64)
        lo = t.floor().long().clamp(0, len(AC) - 2)
        ac = AC[lo] + (t - lo) * (AC[lo + 1] - AC[lo])
        args = t[:, None] * self.freqs[None]
        emb = torch.cat([args.cos(), args.sin()], 1).float()
        h = torch.nn.functional.conv2d(x, self.w1, self.b1, padding=1) + (emb @ self.w_emb.T)[:, :, None, None]
        net = torch.nn.functional.conv2d(torch.nn.functional.silu(h), self.w2, padding=1)
        return (1 - ac).sqrt().float()[:, None, None, None] * x + 0.2 * net


MODEL = TinyEps()


def x_T(seed: int = 0) -> torch.Tensor:
    return initial_noise(SHAPE, torch.Generator().manual_seed(seed), "cpu")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def run_ours(name: str, steps: int, seed: int = 7, eps_scale: float = 1.0, timesteps=None):
    sampler = SAMPLERS[name]
    ts = sampler.schedule(steps, AC) if timesteps is None else timesteps
    g = torch.Generator().manual_seed(seed)
    seen, xs = [], []

    def model_fn(x, t):
        seen.append(t.clone())
        return MODEL(x, t) * eps_scale

    out = sampler.sample(model_fn, x_T(), ts, AC, 0.0, g, lambda i, n, x, x0: xs.append(x.clone()))
    return out, ts, seen, xs, g


def run_reference(name: str, steps: int, seed: int = 7):
    cls, options = REFERENCES[name]
    scheduler = cls.from_config(SD15_SCHEDULER_CONFIG, **options)
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    pass_generator = "generator" in inspect.signature(scheduler.step).parameters
    x = x_T() * scheduler.init_noise_sigma
    seen, xs = [], []
    for i, t in enumerate(scheduler.timesteps):
        t_batch = t.reshape(1).repeat(SHAPE[0])
        seen.append(t_batch)
        eps = MODEL(scheduler.scale_model_input(x, t), t_batch)
        x = scheduler.step(eps, t, x, **({"generator": g} if pass_generator else {})).prev_sample
        xs.append(x / (1 + scheduler.sigmas[i + 1] ** 2) ** 0.5 if name in VE_SPACE else x)
    return x, scheduler.timesteps, seen, xs, g


def check_parity(name: str, steps: int) -> float:
    ours, ts, seen, xs, g = run_ours(name, steps)
    ref, ref_ts, ref_seen, ref_xs, ref_g = run_reference(name, steps)
    assert torch.equal(ts.flip(0), ref_ts) and ts.dtype == ref_ts.dtype
    assert len(seen) == len(ref_seen) and all(torch.equal(a, b) for a, b in zip(seen, ref_seen))
    # The callback's x is in the UNet's space, the final one is the output.
    assert torch.equal(xs[-1], ours)
    step_errors = [rel_err(a, b) for a, b in zip(xs, ref_xs)]
    assert max(step_errors) <= TOL, step_errors
    # Same number of draws in the same order: the generators end in the same state.
    assert torch.equal(g.get_state(), ref_g.get_state())
    err = rel_err(ours, ref)
    assert err <= TOL
    return err


@pytest.mark.parametrize("steps", [1, 4, 10, 25])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_matches_diffusers(name, steps):
    check_parity(name, steps)


@pytest.mark.parametrize("steps", [1, 4, 8, 10])
@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_matches_diffusers_with_same_generator(name, steps):
    check_parity(name, steps)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_use_the_generator(name):
    a, *_ = run_ours(name, 4, seed=1)
    b, *_ = run_ours(name, 4, seed=1)
    c, *_ = run_ours(name, 4, seed=2)
    assert torch.equal(a, b)
    assert rel_err(c, a) > 1e-2


@pytest.mark.parametrize("name", [n for n in SAMPLERS if n != "ddim"])
def test_schedules_match_diffusers(name):
    """Every step count up to 100 (LCM: 50; DDIM's schedule is the original's, tested in test_ddim)."""
    cls, options = REFERENCES[name]
    scheduler = cls.from_config(SD15_SCHEDULER_CONFIG, **options)
    for steps in range(1, 51 if name == "lcm" else 101):
        scheduler.set_timesteps(steps)
        ts = SAMPLERS[name].schedule(steps, AC)
        assert torch.equal(ts.flip(0), scheduler.timesteps), steps


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_scaled_eps_breaks_parity(name):
    """ε·1.001 inside model_fn must show at the tolerance used above."""
    steps = 4 if name == "lcm" else 10
    ours, *_ = run_ours(name, steps, eps_scale=1.001)
    ref, *_ = run_reference(name, steps)
    assert rel_err(ours, ref) > 5 * TOL


@pytest.mark.parametrize("name", ["euler", "euler_a", "dpmpp_2m", "unipc", "lcm"])
def test_shifted_timestep_breaks_parity(name):
    ts = SAMPLERS[name].schedule(4, AC).clone()
    ts[1] += 1
    ours, *_ = run_ours(name, 4, timesteps=ts)
    ref, *_ = run_reference(name, 4)
    assert rel_err(ours, ref) > 5 * TOL


def test_lcm_schedule_limits():
    with pytest.raises(ValueError):
        SAMPLERS["lcm"].schedule(51, AC)
    with pytest.raises(ValueError):
        SAMPLERS["euler"].schedule(0, AC)


def test_karras_sampler_rejects_other_timesteps():
    ts = karras_timesteps(6, AC).clone()
    ts[2] += 1
    with pytest.raises(ValueError):
        run_ours("dpmpp_2m_karras", 6, timesteps=ts)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_works_for_few_steps(name):
    sampler = SAMPLERS[name]
    assert isinstance(sampler, Sampler) and sampler.name == name and sampler.label
    for steps in range(1, 6):
        out, ts, seen, xs, _ = run_ours(name, steps)
        assert out.shape == SHAPE and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert len(seen) == len(xs) == len(ts) >= 1
        assert torch.all(ts[1:] > ts[:-1]) or name == "dpmpp_2m_karras"
        # model_fn sees exactly the schedule's entries, one per step, in descending order.
        allowed = set(ts.tolist())
        for k, t in enumerate(seen):
            assert t.shape == (SHAPE[0],) and t.dtype == ts.dtype
            assert set(t.tolist()) == {ts.flip(0)[k].item()} and t[0].item() in allowed


def test_labels_are_unique():
    labels = [s.label for s in SAMPLERS.values()]
    assert len(set(labels)) == len(labels)
    assert [s.stochastic for s in SAMPLERS.values()] == [n in STOCHASTIC for n in SAMPLERS]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_cancels(name):
    sampler = SAMPLERS[name]
    ts = sampler.schedule(4, AC)
    calls = []

    def stop_after_two(i, n, x, x0):
        calls.append((i, n, x.shape, x0.shape))
        return i < 1

    with pytest.raises(SamplingCancelled) as info:
        sampler.sample(MODEL, x_T(), ts, AC, 0.0, torch.Generator().manual_seed(0), stop_after_two)
    assert (info.value.step, info.value.total) == (2, len(ts))
    assert calls == [(0, len(ts), torch.Size(SHAPE), torch.Size(SHAPE)), (1, len(ts), torch.Size(SHAPE), torch.Size(SHAPE))]


def test_model_dtype_does_not_change_the_update():
    """A half-precision model's ε is upcast; the latents stay float32."""
    ts = SAMPLERS["dpmpp_2m"].schedule(5, AC)
    out = SAMPLERS["dpmpp_2m"].sample(lambda x, t: MODEL(x, t).to(torch.bfloat16), x_T(), ts, AC)
    assert out.dtype == torch.float32
