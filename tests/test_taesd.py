"""TAESD matches diffusers' `AutoencoderTiny` on the same random weights, read from either file layout.

The own-format files are written as madebyollin's are (decoder Sequential indices 1..19, the Clamp at 0 holding no
weights; encoder 0..14); the diffusers file is `AutoencoderTiny.state_dict()` (`decoder.layers.N`, `encoder.layers.N`).
Relative error: max|a - b| / max|b|.
"""
from __future__ import annotations

import re
import time

import pytest
import torch
from safetensors.torch import save_file

from cldm.checkpoint import CheckpointError
from cldm.config import load_config
from cldm.preview import load_taesd
from ldm.taesd import TAESD
from ldm.vae import AutoencoderKL
from tests.tiny import V15_YAML

TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def reference():
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    model = AutoencoderTiny().eval()
    with torch.no_grad():  # random, non-zero, O(1) activations: weights ~ 1/sqrt(fan_in), biases 0.1 * N(0, 1)
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5 if p.ndim > 1 else 0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    # Latents of std 3 so that the decoder's tanh clamp is far from the identity.
    return {"z": 3 * torch.randn(2, 4, 8, 8, generator=gen), "x": torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1}


def own_format(reference) -> tuple[dict, dict]:
    """The published files' layout: madebyollin's decoder Sequential has the Clamp at index 0."""
    state = reference.state_dict()
    decoder = {re.sub(r"^decoder\.layers\.(\d+)", lambda m: str(int(m[1]) + 1), k): v.clone()
               for k, v in state.items() if k.startswith("decoder.")}
    encoder = {k.removeprefix("encoder.layers."): v.clone() for k, v in state.items() if k.startswith("encoder.")}
    return decoder, encoder


@torch.no_grad()
def check_parity(ours: TAESD, reference, inputs) -> None:
    decoded, expected = ours.decode(inputs["z"]), reference.decode(inputs["z"]).sample
    print(f"decode: rel err {rel_err(decoded, expected):.2e}, max abs {(decoded - expected).abs().max():.2e}")
    assert decoded.shape == (2, 3, 64, 64) and rel_err(decoded, expected) <= TOL
    if ours.encoder is not None:
        encoded, expected = ours.encode(inputs["x"]), reference.encode(inputs["x"]).latents
        print(f"encode: rel err {rel_err(encoded, expected):.2e}")
        assert encoded.shape == (2, 4, 8, 8) and rel_err(encoded, expected) <= TOL


def test_own_format_keys_are_the_published_ones():
    decoder, encoder = TAESD(with_encoder=True).decoder.state_dict(), TAESD(with_encoder=True).encoder.state_dict()
    # 10 Blocks of three biased 3x3 convs each; first and last conv biased; the 3 resampling convs without bias.
    assert len(decoder) == len(encoder) == 2 + 10 * 6 + 3 + 2
    assert {"1.weight", "1.bias", "3.conv.0.weight", "3.conv.4.bias", "7.weight", "12.weight", "17.weight",
            "18.conv.2.weight", "19.weight", "19.bias"} <= decoder.keys() and "7.bias" not in decoder
    assert {"0.weight", "1.conv.0.weight", "2.weight", "6.weight", "10.weight", "14.weight", "14.bias"} <= encoder.keys()
    assert "2.bias" not in encoder and "0.weight" not in decoder
    assert decoder["1.weight"].shape == (64, 4, 3, 3) and decoder["19.weight"].shape == (3, 64, 3, 3)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_own_format_files_match_diffusers(reference, inputs, tmp_path, suffix):
    decoder, encoder = own_format(reference)
    paths = tmp_path / f"taesd_decoder{suffix}", tmp_path / f"taesd_encoder{suffix}"
    for state, path in zip((decoder, encoder), paths):
        save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    check_parity(load_taesd(paths[0], encoder_path=paths[1]), reference, inputs)
    assert load_taesd(paths[0]).encoder is None


def test_diffusers_file_matches_diffusers(reference, inputs, tmp_path):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    ours = load_taesd(path)
    assert ours.encoder is not None
    check_parity(ours, reference, inputs)


@torch.no_grad()
def test_parity_check_can_fail(reference, inputs, tmp_path):
    decoder, _ = own_format(reference)
    decoder["19.bias"] = decoder["19.bias"] + 1e-3  # one output bias off by 1e-3
    save_file(decoder, str(tmp_path / "d.safetensors"))
    ours = load_taesd(tmp_path / "d.safetensors")
    assert rel_err(ours.decode(inputs["z"]), reference.decode(inputs["z"]).sample) > 1e-4
    # Without the soft clamp the decoder would see latents beyond +-3: a different output.
    assert rel_err(ours.decoder[1:](inputs["z"]), ours.decoder(inputs["z"])) > 1e-2


def test_bad_files_raise(reference, tmp_path):
    decoder, encoder = own_format(reference)
    save_file(encoder, str(tmp_path / "taesd_encoder.safetensors"))
    with pytest.raises(CheckpointError, match="encoder file"):
        load_taesd(tmp_path / "taesd_encoder.safetensors")
    decoder["extra.weight"] = torch.ones(1)
    save_file(decoder, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match=r"odd\.safetensors.*unexpected keys.*extra\.weight"):
        load_taesd(tmp_path / "odd.safetensors")
    save_file({"model.weight": torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="foreign.safetensors: not a TAESD decoder"):
        load_taesd(tmp_path / "foreign.safetensors")


@torch.no_grad()
def test_decode_is_much_faster_than_the_sd_vae():
    """Full-size TAESD vs the full-size SD 1.5 VAE decoder on one 16x16 latent (128 px; 64x64: bench/taesd.py)."""
    taesd = TAESD().eval()
    vae = AutoencoderKL(load_config(V15_YAML).first_stage).eval()
    z = torch.randn(1, 4, 16, 16)

    def best_of(fn, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(z)
            times.append(time.perf_counter() - start)
        return min(times)

    tiny_s, vae_s = best_of(taesd.decode, 3), best_of(lambda z: vae.decode(z / 0.18215), 2)
    print(f"16x16 latent, 1 thread: TAESD {tiny_s * 1e3:.0f} ms, SD VAE {vae_s * 1e3:.0f} ms, ratio {vae_s / tiny_s:.1f}")
    assert vae_s > 3 * tiny_s
