"""The compiled bfloat16 softmax of the CPU attention (ldm/softmax.c, built by ldm/native_softmax.py).

It must agree with PyTorch's softmax to bfloat16's resolution on every row shape the attention meets, build and
load on this machine (CI installs a C compiler), leave the process' float arithmetic alone, and give way to
PyTorch's softmax wherever it cannot be built."""
from __future__ import annotations

import pytest
import torch

from ldm import native_softmax
from ldm.cpu_attention import blocked_attention
from ldm.native_softmax import KernelUnavailable, build_kernel, softmax


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return build_kernel(tmp_path_factory.mktemp("kernels"))


def bf16_steps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bfloat16 values lie between a and b (both non-negative bfloat16)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


@pytest.mark.parametrize("rows,cols,spread", [
    (512, 4096, 4.0),   # a score block of the 64×64 self-attention
    (300, 1024, 4.0),   # 32×32, a last block shorter than the others
    (3, 1, 1.0),        # one key: every weight is 1
    (7, 77, 30.0),      # a width that is no multiple of the vector length; peaked rows
    (5, 4097, 200.0),   # most weights underflow to 0, as they do in float32
])
def test_equals_pytorch_softmax_to_one_bfloat16_step(lib, rows, cols, spread):
    g = torch.Generator().manual_seed(cols)
    scores = (torch.randn(rows, cols, generator=g) * spread).bfloat16()
    out = softmax(scores, torch.empty_like(scores), lib)
    exact = torch.softmax(scores.float(), dim=-1).bfloat16()
    normal = exact.float() >= 2**-126  # below that float32 is subnormal, and the kernel gives 0
    assert bf16_steps_apart(out, exact)[normal].max() <= 1
    assert (out.float()[~normal].abs() < 2**-126).all()
    assert (out == torch.softmax(scores, dim=-1))[normal].float().mean() > 0.99
    assert torch.allclose(out.float().sum(-1), torch.ones(rows), atol=2e-2)


def test_in_place_and_on_any_thread_count(lib):
    scores = (torch.randn(64, 1000, generator=torch.Generator().manual_seed(3)) * 5).bfloat16()
    expected = softmax(scores, torch.empty_like(scores), lib)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(softmax(scores, torch.empty_like(scores), lib), expected)
    finally:
        torch.set_num_threads(threads)
    same = scores.clone()
    assert torch.equal(softmax(same, same, lib), expected)


def test_a_wrong_coefficient_is_caught(tmp_path):
    """The parity check above can fail: the same source with one polynomial coefficient off by 2 %."""
    source = native_softmax.SOURCE.read_text()
    assert "p = p * f + 6.9300669e-1f;" in source
    broken = tmp_path / "softmax.c"
    broken.write_text(source.replace("p = p * f + 6.9300669e-1f;", "p = p * f + 7.07e-1f;"))
    wrong = build_kernel(tmp_path / "build", source=broken)
    scores = (torch.randn(64, 4096, generator=torch.Generator().manual_seed(0)) * 4).bfloat16()
    out = softmax(scores, torch.empty_like(scores), wrong)
    exact = torch.softmax(scores.float(), dim=-1).bfloat16()
    normal = exact.float() >= 2**-126
    assert bf16_steps_apart(out, exact)[normal].max() > 1


def test_loading_it_keeps_subnormal_floats(lib):
    """Built with -ffast-math at compile time only: loading it must not switch the process to flush-to-zero,
    which would change float32 results everywhere."""
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert (tiny * 1.0).item() != 0.0
    assert (tiny / 2).item() != 0.0


def test_reuses_a_build_and_rebuilds_for_a_changed_source(tmp_path):
    build_kernel(tmp_path)
    assert len(list(tmp_path.glob("softmax-*.so"))) == 1
    build_kernel(tmp_path)
    assert len(list(tmp_path.glob("softmax-*.so"))) == 1
    changed = tmp_path / "changed.c"
    changed.write_text(native_softmax.SOURCE.read_text() + "\n/* changed */\n")
    build_kernel(tmp_path, source=changed)
    assert len(list(tmp_path.glob("softmax-*.so"))) == 2
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no build folder left behind


def test_without_a_compiler_it_says_why_and_pytorch_computes(tmp_path, monkeypatch):
    with pytest.raises(KernelUnavailable, match="no working C compiler"):
        build_kernel(tmp_path, compiler="no-such-compiler")
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    with pytest.raises(KernelUnavailable, match="failed"):
        build_kernel(tmp_path / "b", source=broken)
    monkeypatch.setattr(native_softmax, "kernel", lambda: None)
    scores = torch.randn(8, 100).bfloat16()
    assert torch.equal(softmax(scores, torch.empty_like(scores)), torch.softmax(scores, dim=-1))


def test_float32_takes_pytorch_softmax(lib):
    scores = torch.randn(4, 50)
    assert torch.equal(softmax(scores, torch.empty(4, 50), lib), torch.softmax(scores, -1))


def test_this_machine_builds_the_default_kernel():
    """The attention finds the kernel on its own here (the other tests build it into temporary folders)."""
    assert native_softmax.kernel() is not None


def test_blocked_attention_in_bfloat16_with_the_kernel_stays_close_to_float32():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 8, 1100, 40, generator=g) for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ours = blocked_attention(*(t.bfloat16() for t in (q, k, v)), 256).float()
    pytorch_bf16 = torch.nn.functional.scaled_dot_product_attention(*(t.bfloat16() for t in (q, k, v))).float()
    err_ours = float((ours - exact).norm() / exact.norm())
    err_pytorch = float((pytorch_bf16 - exact).norm() / exact.norm())
    assert err_ours < 1.5 * err_pytorch + 1e-3
