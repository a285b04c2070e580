"""Numerical parity of the tiny model with diffusers/transformers holding the same random weights.

Weights are random in the official layout (zero convolutions non-zero), converted with diffusers' own
single-file utilities. Relative error everywhere: max|a - b| / max|b|.
"""
import numpy as np
import pytest
import torch

from tests.tiny import TINY_YAML, random_model, to_diffusers

TOL = 1e-4
PROMPTS = ["", "Hello, World!!! (best quality:1.2), it's [done]; 3.14 #1",
           "a very long prompt about a cat sitting on a mat " * 10]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model, sd = random_model(seed=0)
    return model, to_diffusers(sd, TINY_YAML)


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    return {"x": torch.randn(2, 4, 8, 8, generator=gen), "t": torch.tensor([7, 801]),
            "context": torch.randn(2, 77, 32, generator=gen), "hint": torch.rand(2, 3, 64, 64, generator=gen)}


def reference_eps(ref, inputs, scales=None, only_mid=False, control=True):
    x, t, ctx = inputs["x"], inputs["t"], inputs["context"]
    if not control:
        return ref.unet(x, t, encoder_hidden_states=ctx).sample
    down, mid = ref.controlnet(x, t, encoder_hidden_states=ctx, controlnet_cond=inputs["hint"],
                               conditioning_scale=1.0, return_dict=False)
    scales = scales or [1.0] * (len(down) + 1)
    down = [d * s for d, s in zip(down, scales)]
    if only_mid:  # diffusers drops a lone mid residual (parity fact 3): pass zeros as the skips
        down = [torch.zeros_like(d) for d in down]
    return ref.unet(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid * scales[-1]).sample


def our_eps(model, inputs, scales=None, only_mid=False, control=True):
    model.control_scales = scales or [1.0] * len(model.control_scales)
    model.only_mid_control = only_mid
    cond = {"c_concat": [inputs["hint"]] if control else None, "c_crossattn": [inputs["context"]]}
    try:
        return model.apply_model(inputs["x"], inputs["t"], cond)
    finally:
        model.control_scales, model.only_mid_control = [1.0] * len(model.control_scales), False


GUESS_SCALES = [0.825 ** (4 - i) for i in range(5)]  # the apps' guess-mode rule, for the 5 tiny outputs


@pytest.mark.parametrize("case", [
    dict(),
    dict(scales=GUESS_SCALES),
    dict(scales=[0.0, 2.0, 0.5, 1.3, 0.7], only_mid=True),
    dict(control=False),
], ids=["scale1", "per_block_scales", "only_mid_control", "plain_unet"])
@torch.no_grad()
def test_eps(pair, inputs, case):
    model, ref = pair
    ours, expected = our_eps(model, inputs, **case), reference_eps(ref, inputs, **case)
    err = rel_err(ours, expected)
    print(f"eps {case}: rel err {err:.2e}")
    assert err <= TOL


@torch.no_grad()
def test_control_actually_contributes(pair, inputs):
    model, _ = pair
    assert rel_err(our_eps(model, inputs), our_eps(model, inputs, control=False)) > 1e-2
    assert rel_err(our_eps(model, inputs, only_mid=True), our_eps(model, inputs)) > 1e-3


@torch.no_grad()
def test_text_embeddings(pair):
    model, ref = pair
    ids = model.cond_stage_model.tokenize(PROMPTS)  # equality with transformers' tokenizer: test_tokenizer.py
    err = rel_err(model.get_learned_conditioning(PROMPTS), ref.text_encoder(ids).last_hidden_state)
    print(f"text: rel err {err:.2e}")
    assert err <= TOL
    uncond = model.get_unconditional_conditioning(2)
    assert uncond.shape == (2, 77, 32) and torch.equal(uncond[0], model.get_learned_conditioning([""])[0])


@torch.no_grad()
def test_vae_encode_decode(pair):
    model, ref = pair
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    posterior, expected = model.encode_first_stage(image), ref.vae.encode(image).latent_dist
    errs = {"mean": rel_err(posterior.mean, expected.mean), "logvar": rel_err(posterior.logvar, expected.logvar)}
    z = torch.randn(1, 4, 8, 8, generator=gen)
    errs["decode"] = rel_err(model.decode_first_stage(z * model.scale_factor), ref.vae.decode(z).sample)
    print(f"vae: {errs}")
    assert max(errs.values()) <= TOL
    assert torch.equal(posterior.mode(), posterior.mean)
    sample = model.get_first_stage_encoding(posterior, torch.Generator().manual_seed(5))
    again = model.get_first_stage_encoding(posterior, torch.Generator().manual_seed(5))
    assert torch.equal(sample, again) and not torch.equal(sample, model.scale_factor * posterior.mean)


def test_schedule_buffers(pair):
    from diffusers import DDPMScheduler

    model, _ = pair
    betas = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").betas.numpy()
    b = betas.astype(np.float64)  # closed forms in float64 from diffusers' betas (parity fact 5)
    a = 1.0 - b
    ac = np.cumprod(a)
    ac_prev = np.append(1.0, ac[:-1])
    var = b * (1 - ac_prev) / (1 - ac)
    expected = {
        "betas": b, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev, "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac), "log_one_minus_alphas_cumprod": np.log(1 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1 / ac), "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ac - 1),
        "posterior_variance": var, "posterior_log_variance_clipped": np.log(np.maximum(var, 1e-20)),
        "posterior_mean_coef1": b * np.sqrt(ac_prev) / (1 - ac),
        "posterior_mean_coef2": (1 - ac_prev) * np.sqrt(a) / (1 - ac),
    }
    errs = {k: rel_err(getattr(model, k), torch.from_numpy(v)) for k, v in expected.items()}
    print(f"schedule: worst {max(errs, key=errs.get)} {max(errs.values()):.2e}")
    assert max(errs.values()) <= TOL
    assert getattr(model, "betas").dtype == torch.float32 and torch.equal(model.logvar, torch.zeros(1000))
    assert model.betas[0].item() == pytest.approx(0.00085) and model.betas[-1].item() == pytest.approx(0.012)


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
@torch.no_grad()
def test_low_precision_eps(inputs, dtype, tol):
    model, _ = random_model(seed=0)
    full = our_eps(model, inputs)
    model.to(dtype)
    assert model.dtype == dtype
    low = our_eps(model, inputs)
    err = rel_err(low.float(), full)
    print(f"eps {dtype}: rel err {err:.2e}")
    assert low.dtype == dtype and torch.isfinite(low).all() and err <= tol
    text = model.get_learned_conditioning(PROMPTS[:2])
    assert text.dtype == dtype and torch.isfinite(text).all()
    image = model.decode_first_stage(torch.randn(1, 4, 8, 8))
    assert image.dtype == dtype and torch.isfinite(image).all()


@torch.no_grad()
def test_two_units_compose(pair, inputs):
    """Two identical ControlNet units at strength s give the same eps as one unit at 2s."""
    from cldm.control import scale_residuals, sum_residuals

    model, _ = pair
    x, t, ctx, hint = inputs["x"], inputs["t"], inputs["context"], inputs["hint"]
    s = 0.35
    n = len(model.control_scales)
    unit = scale_residuals(model.control_residuals(x, hint, t, ctx, model.control_model), [s] * n)
    twice = model.model(x, t, ctx, sum_residuals(unit, unit))
    assert torch.equal(twice, our_eps(model, inputs, scales=[2 * s] * n))
    other_hint = torch.flip(hint, dims=[-1])
    mixed = sum_residuals(unit, scale_residuals(model.control_residuals(x, other_hint, t, ctx), [s] * n))
    assert rel_err(model.model(x, t, ctx, mixed), twice) > 1e-3  # each unit's own hint matters
    with pytest.raises(ValueError):
        sum_residuals(unit, unit[:-1])


@torch.no_grad()
def test_linear_transformer_variant(tmp_path, inputs):
    """SD 2.x-style attention options (use_linear_in_transformer, num_head_channels) against diffusers too."""
    import yaml

    data = yaml.safe_load(TINY_YAML.read_text())
    for key in ("unet_config", "control_stage_config"):
        params = data["model"]["params"][key]["params"]
        params.pop("num_heads")
        params.update(num_head_channels=16, use_linear_in_transformer=True)
    path = tmp_path / "tiny_linear.yaml"
    path.write_text(yaml.safe_dump(data))
    model, sd = random_model(seed=6, yaml_path=path)
    assert model.state_dict()["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2
    ref = to_diffusers(sd, path)
    errs = [rel_err(our_eps(model, inputs, **case), reference_eps(ref, inputs, **case))
            for case in (dict(), dict(control=False))]
    print(f"linear-transformer eps: rel errs {errs}")
    assert max(errs) <= TOL


def test_bad_inputs_raise(pair, inputs):
    model, _ = pair
    x, t, ctx, hint = inputs["x"], inputs["t"], inputs["context"], inputs["hint"]
    with pytest.raises(ValueError, match="8x the latent"):
        model.apply_model(x, t, {"c_concat": [hint[..., :32, :32]], "c_crossattn": [ctx]})
    with pytest.raises(ValueError, match="channels"):
        model.apply_model(x, t, {"c_concat": [hint[:, :1]], "c_crossattn": [ctx]})
    with pytest.raises(ValueError, match="c_crossattn"):
        model.apply_model(x, t, {"c_concat": [hint]})
    with pytest.raises(ValueError, match="timesteps"):
        model.apply_model(x, torch.tensor([1, 2, 3]), {"c_concat": None, "c_crossattn": [ctx]})
    with pytest.raises(ValueError, match="control residuals"):
        model.model(x, t, ctx, model.control_residuals(x, hint, t, ctx)[:-1])
    model.control_scales = [1.0] * 3
    try:
        with pytest.raises(ValueError, match="control scales"):
            model.apply_model(x, t, {"c_concat": [hint], "c_crossattn": [ctx]})
    finally:
        model.control_scales = [1.0] * 5
    with pytest.raises(TypeError):
        model.get_learned_conditioning("not a list")
    with pytest.raises(ValueError):
        model.get_unconditional_conditioning(0)


@torch.no_grad()
def test_low_vram_shift_is_a_no_op_on_cpu(pair, inputs):
    model, _ = pair
    model.low_memory = True
    try:
        before = our_eps(model, inputs)
        model.low_vram_shift(is_diffusing=True)
        model.low_vram_shift(is_diffusing=False)
        assert model.device.type == "cpu" and all(p.device.type == "cpu" for p in model.parameters())
        assert torch.equal(our_eps(model, inputs), before)
    finally:
        model.low_memory = False
