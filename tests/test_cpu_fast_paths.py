"""The bfloat16 CPU paths (blocked attention, GroupNorm without the float32 copy, channels-last decoders, the VAE
decoder's sub-pixel upsampling convolution) and the once-per-run hint encoding: each is checked against the
plain computation it replaces. float32 takes none of
the bfloat16 paths, so the reference outputs of the other tests are untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cldm.control import Control, ControlledDenoiser, ControlMode, ControlUnit
from cldm.ddim import guided_model_fn
from cldm.shared_model import randomize_
from ldm.attention import GroupNorm32, SpatialTransformer
from ldm import cpu_attention
from ldm.cpu_attention import MIN_KEYS, attention, blocked_attention
from ldm.layout import cpu_bfloat16_layout
from ldm.matmul_conv import Conv2d, conv_as_matmul
from ldm.subpixel import upsample_conv
from ldm.taesd import TAESD
from ldm.vae import Decoder, Upsample
from tests.tiny import random_model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("batch,heads,n,keys,width,block", [
    (1, 8, 300, 1100, 40, 128),   # query count not a multiple of the block; SD's head size
    (2, 2, 64, 64, 80, 512),      # one block
    (1, 1, 96, 130, 512, 32),     # the VAE's single 512-wide head
    (2, 3, 50, 70, 7, 16),        # a width that is padded to 16
])
def test_blocked_attention_is_scaled_dot_product_attention(batch, heads, n, keys, width, block):
    g = torch.Generator().manual_seed(n)
    q = torch.randn(batch, heads, n, width, generator=g)
    k, v = torch.randn(2, batch, heads, keys, width, generator=g)
    out = blocked_attention(q, k, v, block)
    assert out.shape == (batch, heads, n, width)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5)
    # A perturbed value changes the output: the comparison is not vacuous.
    v[0, 0, 0] += 1
    assert not torch.allclose(blocked_attention(q, k, v, block), out, atol=1e-4)


def test_attention_takes_the_blocked_path_for_long_bfloat16_self_attention(monkeypatch):
    monkeypatch.setattr(cpu_attention, "cpu_has_amx", lambda: False)
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 1, 8, MIN_KEYS, 40, generator=g)
    exact = F.scaled_dot_product_attention(q, k, v)
    fast = attention(*(t.bfloat16() for t in (q, k, v)))
    assert fast.dtype == torch.bfloat16 and rel(fast, exact) < 1e-2
    torch.testing.assert_close(fast, blocked_attention(*(t.bfloat16() for t in (q, k, v))), rtol=0, atol=0)
    # Fewer keys (cross-attention), float32 and training keep PyTorch's kernel.
    short = [t[:, :, :77].bfloat16() for t in (q, k, v)]
    torch.testing.assert_close(attention(*short), F.scaled_dot_product_attention(*short), rtol=0, atol=0)
    torch.testing.assert_close(attention(q, k, v), exact, rtol=0, atol=0)
    qg = q.bfloat16().requires_grad_()
    attention(qg, k.bfloat16(), v.bfloat16()).float().sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad.float()).all()


def test_attention_keeps_pytorchs_kernel_on_a_cpu_with_amx(monkeypatch):
    monkeypatch.setattr(cpu_attention, "cpu_has_amx", lambda: True)
    q, k, v = torch.randn(3, 1, 2, MIN_KEYS, 40, generator=torch.Generator().manual_seed(1)).bfloat16()
    torch.testing.assert_close(attention(q, k, v), F.scaled_dot_product_attention(q, k, v), rtol=0, atol=0)


@pytest.mark.parametrize("use_linear", [False, True])
def test_spatial_transformer_projections_in_bfloat16_match_the_plain_layers(use_linear):
    """proj_in/proj_out as products over transposed views (bfloat16 on the CPU) against the convolution (or linear
    layer) followed by the transposes; float32 computes exactly the plain composition."""
    block = randomize_(SpatialTransformer(64, 2, 32, 1, 32, use_linear=use_linear), seed=3).eval()
    g = torch.Generator().manual_seed(4)
    x, context = torch.randn(2, 64, 6, 5, generator=g), torch.randn(2, 7, 32, generator=g)

    def plain(block, x):
        b, _, h, w = x.shape
        tokens = block.norm(x)
        tokens = (block.proj_in(tokens).flatten(2).transpose(1, 2) if not use_linear
                  else block.proj_in(tokens.flatten(2).transpose(1, 2)))
        tokens = block.transformer_blocks[0](tokens, context.to(x.dtype))
        if use_linear:
            return block.proj_out(tokens).transpose(1, 2).reshape(b, -1, h, w) + x
        return block.proj_out(tokens.transpose(1, 2).reshape(b, -1, h, w)) + x

    with torch.no_grad():
        torch.testing.assert_close(block(x, context), plain(block, x), rtol=0, atol=0)
        fast = block.bfloat16()(x.bfloat16(), context.bfloat16())
        assert fast.dtype == torch.bfloat16 and fast.shape == x.shape
        # Within bfloat16's rounding of the float32 result (a transposed weight would be off by 100 %).
        assert rel(fast, plain(block.float(), x)) < 2e-2


def test_group_norm_in_bfloat16_matches_the_float32_round_trip():
    torch.manual_seed(0)
    norm = GroupNorm32(32, 64, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 64, 16, 16) * 3 + 1
    expected = F.group_norm(x.bfloat16().float(), 32, norm.weight.bfloat16().float(), norm.bias.bfloat16().float(),
                            1e-6)
    with torch.no_grad():
        out = norm.bfloat16()(x.bfloat16())
    assert out.dtype == torch.bfloat16
    # At most one bfloat16 rounding step (2^-8 relative) from the float32 computation.
    assert ((out.float() - expected).abs() <= expected.abs() * 2**-7 + 1e-2).all()
    assert rel(out, expected) < 5e-3


def test_layout_is_channels_last_only_for_bfloat16():
    z = torch.randn(1, 4, 8, 8)
    assert cpu_bfloat16_layout(z) is z
    zb = cpu_bfloat16_layout(z.bfloat16())
    assert zb.is_contiguous(memory_format=torch.channels_last) and torch.equal(zb, z.bfloat16())


def plain_upsample_conv(x, weight, bias):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)


@pytest.mark.parametrize("batch,in_channels,out_channels,height,width,bias", [
    (1, 8, 8, 5, 7, True), (2, 16, 12, 9, 4, False), (1, 3, 5, 1, 1, True)])
def test_sub_pixel_upsampling_convolution_is_upsample_then_conv(batch, in_channels, out_channels, height, width,
                                                                 bias):
    g = torch.Generator().manual_seed(in_channels)
    x = torch.randn(batch, in_channels, height, width, generator=g)
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=g)
    b = torch.randn(out_channels, generator=g) if bias else None
    out = upsample_conv(x, weight, b)
    expected = plain_upsample_conv(x, weight, b)
    assert out.shape == expected.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # Each tap matters: moving one weight between two taps changes the result.
    moved = weight.clone()
    moved[0, 0, 1, 1], moved[0, 0, 1, 2] = weight[0, 0, 1, 2], weight[0, 0, 1, 1]
    assert not torch.allclose(upsample_conv(x, moved, b), expected, atol=1e-3)
    # bfloat16: within the rounding of the summed kernels and of the output.
    fast = upsample_conv(x.bfloat16(), weight.bfloat16(), None if b is None else b.bfloat16())
    rounded = plain_upsample_conv(x.bfloat16().float(), weight.bfloat16().float(),
                                  None if b is None else b.bfloat16().float())
    assert fast.dtype == torch.bfloat16 and rel(fast, rounded) < 1e-2


def test_vae_upsample_takes_the_sub_pixel_path_only_for_bfloat16_inference():
    torch.manual_seed(0)
    layer = Upsample(8)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), plain_upsample_conv(x, layer.conv.weight, layer.conv.bias),
                                   rtol=0, atol=0)  # float32: the two-step computation, bit for bit
        layer.bfloat16()
        xb = x.bfloat16()
        torch.testing.assert_close(layer(xb), upsample_conv(xb, layer.conv.weight, layer.conv.bias), rtol=0, atol=0)
    xg = xb.clone().requires_grad_()
    out = layer(xg)  # training keeps the two-step computation
    torch.testing.assert_close(out, plain_upsample_conv(xg, layer.conv.weight, layer.conv.bias), rtol=0, atol=0)
    out.float().sum().backward()
    assert xg.grad is not None


@pytest.mark.parametrize("batch,in_channels,out_channels,size,kernel,stride,padding,bias", [
    (1, 40, 24, 4, 3, 1, 1, True),    # the UNet's case: 3×3, same size
    (2, 16, 8, 5, 3, 2, 1, False),    # a stride-2 downsampling on an odd size, two images
    (1, 6, 4, 7, 1, 1, 0, True),      # 1×1
    (3, 5, 7, 6, 3, 1, 0, True),      # no padding
])
def test_convolution_as_one_matrix_product_is_conv2d(batch, in_channels, out_channels, size, kernel, stride,
                                                       padding, bias):
    g = torch.Generator().manual_seed(in_channels)
    x = torch.randn(batch, in_channels, size, size, generator=g)
    weight = torch.randn(out_channels, in_channels, kernel, kernel, generator=g)
    b = torch.randn(out_channels, generator=g) if bias else None
    out = conv_as_matmul(x, weight, b, (stride, stride), (padding, padding))
    expected = F.conv2d(x, weight, b, stride, padding)
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # A kernel read in the wrong order (transposed taps) gives another result.
    if kernel > 1:
        flipped = conv_as_matmul(x, weight.transpose(2, 3), b, (stride, stride), (padding, padding))
        assert not torch.allclose(flipped, expected, atol=1e-3)
    # bfloat16: rounded once, like the convolution (the bias is added inside the product).
    xb, wb, bb = x.bfloat16(), weight.bfloat16(), None if b is None else b.bfloat16()
    exact = F.conv2d(xb.float(), wb.float(), None if bb is None else bb.float(), stride, padding)
    fast, direct = conv_as_matmul(xb, wb, bb, (stride, stride), (padding, padding)), F.conv2d(xb, wb, bb, stride, padding)
    assert fast.dtype == torch.bfloat16 and rel(fast, exact) <= rel(direct, exact) * 1.5 + 1e-3


def test_unet_convolution_takes_the_matrix_product_path_only_for_wide_bfloat16_inputs_over_few_pixels():
    torch.manual_seed(0)
    layer = Conv2d(64, 16, 3, padding=1)  # 576 patch values per pixel: the matrix product up to 9 pixels
    few, many = torch.randn(1, 64, 3, 3), torch.randn(1, 64, 4, 4)
    assert layer.prefers_matmul(few) and not layer.prefers_matmul(many)
    assert not layer.prefers_matmul(torch.randn(2, 64, 3, 3))  # 18 pixels in the batch
    with torch.no_grad():
        # float32: PyTorch's convolution, bit for bit
        torch.testing.assert_close(layer(few), F.conv2d(few, layer.weight, layer.bias, padding=1), rtol=0, atol=0)
        layer.bfloat16()
        fb, mb = few.bfloat16(), many.bfloat16()
        torch.testing.assert_close(layer(fb), conv_as_matmul(fb, layer.weight, layer.bias, (1, 1), (1, 1)),
                                   rtol=0, atol=0)
        torch.testing.assert_close(layer(mb), F.conv2d(mb, layer.weight, layer.bias, padding=1), rtol=0, atol=0)
    xg = fb.clone().requires_grad_()
    out = layer(xg)  # training keeps PyTorch's convolution
    torch.testing.assert_close(out, F.conv2d(xg, layer.weight, layer.bias, padding=1), rtol=0, atol=0)
    out.float().sum().backward()
    assert xg.grad is not None


def test_decoders_in_bfloat16_stay_close_to_float32():
    model, _ = random_model(seed=0)
    vae = model.first_stage_model
    assert isinstance(vae.decoder, Decoder)
    taesd = TAESD()
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for decode, module in ((vae.decode, vae), (taesd.decode, taesd)):
            exact = decode(z)
            module.bfloat16()
            try:
                fast = decode(z.bfloat16())
            finally:
                module.float()
            assert fast.dtype == torch.bfloat16 and rel(fast, exact) < 3e-2


def test_vae_decoder_hands_freed_memory_back_before_each_level_in_cpu_inference(monkeypatch):
    import ldm.vae

    calls = []
    monkeypatch.setattr(ldm.vae, "release_free_memory", lambda: calls.append("release"))
    model, _ = random_model(seed=0)
    vae = model.first_stage_model
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        vae.decode(z)
    assert len(calls) == len(vae.decoder.up)
    calls.clear()
    vae.decode(z.requires_grad_())  # training: the heap is the autograd graph's, left alone
    assert not calls


def test_each_hint_is_encoded_once_per_run_with_the_same_result():
    model, _ = random_model(seed=0)
    net = model.control_model
    control_map = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    hint = torch.from_numpy(control_map).permute(2, 0, 1)[None].float() / 255
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2))
    cond = {"c_concat": [hint], "c_crossattn": [context]}
    uncond = {"c_concat": [hint], "c_crossattn": [torch.zeros_like(context)]}
    timesteps = torch.tensor([1, 251, 501, 751])
    calls = []
    handle = net.input_hint_block.register_forward_hook(lambda *_: calls.append(1))
    try:
        denoiser = ControlledDenoiser(model, [ControlUnit(net, control_map)], ControlMode.BALANCED, timesteps)
        fn = guided_model_fn(denoiser, cond, uncond, 9.0)
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            cached = [fn(x, t.view(1)) for t in timesteps.flip(0)]
            assert len(calls) == 1  # one batched (uncond, cond) hint, encoded at the first step only
            both = torch.cat([hint, hint])
            plain = [(lambda e: e[:1] + 9.0 * (e[1:] - e[:1]))(model.eps(
                torch.cat([x, x]), torch.cat([t.view(1)] * 2), torch.cat([torch.zeros_like(context), context]),
                [Control(net, both, lambda residuals: [1.0] * len(residuals))])) for t in timesteps.flip(0)]
    finally:
        handle.remove()
    assert len(calls) == 1 + len(timesteps)
    for a, b in zip(cached, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_hint_encoder_runs_channels_last_in_bfloat16_with_the_same_result():
    net = randomize_(random_model(seed=0)[0].control_model, 4).to(torch.bfloat16)
    hint = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    layouts = []
    handle = net.input_hint_block[0].register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        with torch.no_grad():
            embedded = net.embed_hint(hint)
            plain = net.input_hint_block(hint.to(torch.bfloat16), None, None)
    finally:
        handle.remove()
    assert layouts == [True, False]
    assert embedded.is_contiguous()  # back in the layout the UNet keeps
    torch.testing.assert_close(embedded, plain, rtol=0, atol=0)
    with torch.no_grad():
        float_net = net.float()
        float_net.input_hint_block[0].register_forward_pre_hook(
            lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        float_net.embed_hint(hint)
    assert layouts[-1] is False  # float32 keeps the default layout
