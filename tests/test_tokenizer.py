"""The SD 1.5 tokenizer built from open_clip's BPE file equals transformers' CLIPTokenizer (ASCII prompts)."""
import pytest
import torch

from ldm.clip import BOS_ID, EOS_ID, CLIPTokenizer
from tests.tiny import hf_tokenizer

PROMPTS = [
    "",
    "a photo of a cat",
    "Hello, World!!! (best quality:1.2), [masterpiece]; {x|y} -- it's 'quoted' & don't #tag @user 3.14 100%",
    "  Tabs\tand\nnew   lines, UPPER case and numbers 1234567 ",
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, worst quality, "
    "low quality, " * 4,
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return CLIPTokenizer(), hf_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))


def test_matches_transformers(tokenizers):
    ours, hf = tokenizers
    expected = hf(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    got = ours(PROMPTS)
    assert got.dtype == torch.long and got.shape == (len(PROMPTS), 77)
    assert torch.equal(got, expected)
    assert len(ours.encode(PROMPTS[-1])) > 75  # the last prompt really is truncated


def test_layout_of_ids(tokenizers):
    ours, _ = tokenizers
    assert len(ours) == 49408
    empty, cat = ours(["", "a photo of a cat"])
    assert empty.tolist() == [BOS_ID] + [EOS_ID] * 76
    assert cat[:7].tolist() == [BOS_ID, 320, 1125, 539, 320, 2368, EOS_ID] and (cat[7:] == EOS_ID).all()
    long_ids = ours([PROMPTS[-1]])[0]
    assert long_ids[0] == BOS_ID and long_ids[-1] == EOS_ID
    assert long_ids[1:-1].tolist() == ours.encode(PROMPTS[-1])[:75]


@pytest.mark.parametrize("bad", ["a string, not a list", [1, 2], [None]])
def test_rejects_non_string_prompts(tokenizers, bad):
    with pytest.raises(TypeError):
        tokenizers[0](bad)
