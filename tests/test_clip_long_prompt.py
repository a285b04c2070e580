"""The ControlNet 1.1 anime-lineart text encoding: prompts of up to 3×75 tokens as three 77-token sequences
(231 context tokens) and CLIP skip 2 (the second-to-last layer's output, then the final LayerNorm).

References: transformers' CLIPTokenizer (ids without truncation or special tokens) and CLIPTextModel with
output_hidden_states=True holding the same random weights, on a 12-layer text tower (the real depth, tiny width).
"""
import numpy as np
import pytest
import torch

from cldm.pipeline import GenerationParams, generate
from ldm.clip import BOS_ID, EOS_ID, FrozenCLIPEmbedder
from ldm.config import TextEncoderConfig
from tests.tiny import hf_tokenizer, random_model

WORDS = "masterpiece best quality ultra detailed illustration disheveled hair girl standing in the rain".split()
LONG = ", ".join(f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i) % len(WORDS)]}" for i in range(130))  # > 225 tokens
PROMPTS = [LONG, "a girl", ""]
TEXT = TextEncoderConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    return hf_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))


@pytest.fixture(scope="module")
def encoders():
    """Our FrozenCLIPEmbedder and transformers' CLIPTextModel with the same random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    ours = FrozenCLIPEmbedder(TEXT).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(noise / p[0].numel() ** 0.5 if p.ndim >= 2 else (1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise))
    ref = CLIPTextModel(CLIPTextConfig(
        vocab_size=TEXT.vocab_size, hidden_size=TEXT.hidden_size, intermediate_size=TEXT.intermediate_size,
        num_hidden_layers=TEXT.num_hidden_layers, num_attention_heads=TEXT.num_attention_heads,
        max_position_embeddings=TEXT.max_length, hidden_act="quick_gelu", bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        pad_token_id=EOS_ID)).eval()
    state = ours.transformer.state_dict()
    if not hasattr(ref, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    return ours, ref


def reference_ids(hf_tok, prompt: str) -> list[list[int]]:
    """The original's chunking, spelled out with transformers' tokenizer."""
    ids = hf_tok(prompt, truncation=False, add_special_tokens=False).input_ids
    chunks = []
    for k in range(3):
        piece = [hf_tok.bos_token_id] + ids[75 * k:75 * (k + 1)] + [hf_tok.eos_token_id]
        chunks.append(piece + [hf_tok.pad_token_id] * (77 - len(piece)))
    return chunks


def test_three_chunk_ids(hf_tok):
    tokenizer = FrozenCLIPEmbedder(TEXT).tokenizer
    full = tokenizer.encode(LONG)
    assert full == hf_tok(LONG, truncation=False, add_special_tokens=False).input_ids
    assert len(full) > 225 and hf_tok.pad_token_id == EOS_ID == 49407
    ids = tokenizer.chunked(PROMPTS, 3)
    assert ids.shape == (3, 3, 77) and ids.dtype == torch.long
    for prompt, got in zip(PROMPTS, ids):
        assert got.tolist() == reference_ids(hf_tok, prompt)
    long_ids = ids[0]
    assert long_ids[:, 0].tolist() == [BOS_ID] * 3 and long_ids[:, -1].tolist() == [EOS_ID] * 3
    assert torch.cat([c[1:76] for c in long_ids]).tolist() == full[:225]  # ids 225… are dropped
    short = ids[1]
    n = len(tokenizer.encode("a girl"))
    assert short[0, 1:1 + n].tolist() == tokenizer.encode("a girl")
    for empty in short[1:]:  # the unused chunks are still encoded: BOS, EOS, 75 pads
        assert empty.tolist() == [BOS_ID] + [EOS_ID] * 76
    # One chunk is the plain, truncating tokenization.
    assert torch.equal(tokenizer.chunked(PROMPTS, 1)[:, 0], tokenizer(PROMPTS))


@torch.no_grad()
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_chunked_encoding_matches_transformers(encoders, hf_tok, clip_skip):
    ours, ref = encoders
    got = ours(PROMPTS, chunks=3, clip_skip=clip_skip)
    assert got.shape == (3, 231, 32)
    ids = torch.tensor([reference_ids(hf_tok, p) for p in PROMPTS]).reshape(9, 77)
    out = ref(ids, output_hidden_states=True)
    assert len(out.hidden_states) == 13  # embeddings + 12 layers
    if clip_skip == 1:
        expected = out.last_hidden_state
    else:  # entry [-2]: the output of layer 11 of 12, then the final LayerNorm
        expected = getattr(ref, "text_model", ref).final_layer_norm(out.hidden_states[-2])
    expected = expected.reshape(3, 231, 32)
    err = (got - expected).abs().max().item()
    print(f"chunks 3, clip skip {clip_skip}: max abs error {err:.2e} (values up to {expected.abs().max():.2f})")
    assert err < 1e-5
    # Chunk k of a prompt is its own 77-token sequence: the short prompt's first chunk equals its plain encoding.
    torch.testing.assert_close(got[1, :77], ours(["a girl"], clip_skip=clip_skip)[0], rtol=0, atol=1e-6)
    if clip_skip == 2:
        assert (got - ours(PROMPTS, chunks=3)).abs().max() > 1e-2


@torch.no_grad()
def test_defaults_are_the_plain_path(encoders):
    ours, _ = encoders
    plain = ours.transformer(ours.tokenize(PROMPTS))
    assert torch.equal(ours(PROMPTS), plain) and torch.equal(ours(PROMPTS, chunks=1, clip_skip=1), plain)
    with pytest.raises(ValueError):
        ours(PROMPTS, clip_skip=13)
    with pytest.raises(ValueError):
        ours(PROMPTS, chunks=0)


def test_generation_uses_the_long_context():
    model = random_model(seed=6)[0]
    assert model.get_learned_conditioning(["a", "b"], chunks=3, clip_skip=2).shape == (2, 231, 32)
    control_map = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    contexts = []
    handle = model.model.diffusion_model.register_forward_pre_hook(lambda m, a: contexts.append(a[2].clone()))
    try:
        p = GenerationParams(LONG, n_prompt="lowres", num_samples=1, steps=2, seed=1, prompt_chunks=3, clip_skip=2)
        long_images = generate(model, control_map, p).images
        plain_images = generate(model, control_map, GenerationParams(LONG, n_prompt="lowres", num_samples=1, steps=2,
                                                                     seed=1)).images
    finally:
        handle.remove()
    assert [c.shape for c in contexts] == [(2, 231, 32)] * 2 + [(2, 77, 32)] * 2
    expected = torch.cat([model.get_learned_conditioning(["lowres"], chunks=3, clip_skip=2),
                          model.get_learned_conditioning([LONG + ", " + p.a_prompt], chunks=3, clip_skip=2)])
    assert torch.equal(contexts[0], expected)
    assert not np.array_equal(long_images[0], plain_images[0])
