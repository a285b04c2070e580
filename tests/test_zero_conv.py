"""Zero convolutions at zero: ControlLDM's eps is exactly the plain UNet's, whatever the hint."""
import torch

from cldm.config import load_config
from cldm.model import build_model
from tests.tiny import TINY_YAML, random_model, zero_control_convs_


def test_fresh_controlnet_is_zero_initialised():
    cn = build_model(load_config(TINY_YAML)).control_model
    zero = [*cn.zero_convs, cn.middle_block_out, cn.input_hint_block[14]]
    assert all(torch.count_nonzero(p) == 0 for m in zero for p in m.parameters())
    assert torch.count_nonzero(cn.input_hint_block[12].weight) > 0


def test_zero_convs_leave_unet_unchanged():
    model, _ = random_model(seed=3)
    zero_control_convs_(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    context = torch.randn(2, 77, 32, generator=gen)
    t = torch.tensor([1, 901])
    with torch.no_grad():
        plain = model.apply_model(x, t, {"c_concat": None, "c_crossattn": [context]})
        for scale in (1.0, 1.7):
            model.control_scales = [scale] * len(model.control_scales)
            hint = torch.rand(2, 3, 64, 64, generator=gen)
            controlled = model.apply_model(x, t, {"c_concat": [hint], "c_crossattn": [context]})
            assert torch.equal(controlled, plain)
        assert all(torch.count_nonzero(r) == 0 for r in model.control_residuals(x, hint, t, context))


def _loss_and_grads(model, use_checkpoint: bool):
    for module in model.modules():
        if hasattr(module, "use_checkpoint"):
            module.use_checkpoint = use_checkpoint
    model.train()
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(1)
    x, context = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 77, 32, generator=gen)
    hint = torch.rand(1, 3, 64, 64, generator=gen)
    eps = model.apply_model(x, torch.tensor([500]), {"c_concat": [hint], "c_crossattn": [context]})
    eps.square().mean().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_gradients_reach_zero_convs_but_not_the_locked_encoder():
    model, _ = random_model(seed=4)
    zero_control_convs_(model)
    grads = _loss_and_grads(model, use_checkpoint=False)
    # zero-initialised convs still learn: d/dw of w*x + b is x (docs/faq.md of the original)
    assert torch.count_nonzero(grads["control_model.zero_convs.0.0.weight"]) > 0
    assert torch.count_nonzero(grads["control_model.middle_block_out.0.bias"]) > 0
    assert not any(n.startswith(("model.diffusion_model.input_blocks", "model.diffusion_model.middle_block",
                                 "model.diffusion_model.time_embed")) for n in grads)
    assert "model.diffusion_model.out.2.weight" in grads
    checkpointed = _loss_and_grads(model, use_checkpoint=True)
    assert grads.keys() == checkpointed.keys()
    assert all(torch.allclose(grads[n], checkpointed[n], rtol=1e-5, atol=1e-7) for n in grads)
