"""CLIP ViT-L/14 text tower (HF CLIPTextModel key layout) and the SD 1.5 tokenizer, built offline."""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import ftfy
import regex
import torch
import torch.nn.functional as F
from torch import nn

from ldm.config import TextEncoderConfig


BOS_ID, EOS_ID = 49406, 49407
_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def default_bpe_path() -> Path:
    """open_clip ships the CLIP BPE merges; located without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed; it provides bpe_simple_vocab_16e6.txt.gz")
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE vocabulary not found at {path}")
    return path


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Reversible byte -> printable unicode character map used by CLIP's byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def load_bpe(path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocabulary token -> id, merges in rank order) for the 49408-token CLIP vocabulary."""
    with gzip.open(path or default_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    units = list(bytes_to_unicode().values())
    tokens = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _clean(text: str) -> str:
    # ftfy: what the original's (transformers 4.19) tokenizer applied when ftfy was installed.
    return " ".join(ftfy.fix_text(text).split()).lower()


class CLIPTokenizer:
    """SD 1.5 tokenization: [BOS] + up to max_length-2 BPE ids + [EOS], padded with EOS (49407)."""

    def __init__(self, max_length: int = 77, bpe_path: Path | None = None):
        self.encoder, merges = load_bpe(bpe_path)
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.max_length = max_length
        self._bpe = functools.lru_cache(maxsize=10000)(self._bpe_uncached)

    def __len__(self) -> int:
        return len(self.encoder)

    def _bpe_uncached(self, token: str) -> tuple[str, ...]:
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list[int]:
        """BPE ids of the text, without special tokens or truncation."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for piece in _SPLIT.findall(_clean(text)):
            unicode_piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(unicode_piece))
        return ids

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """(N, max_length) int64 ids, truncated and padded as the original FrozenCLIPEmbedder does."""
        return self.chunked(prompts, 1)[:, 0]

    def chunked(self, prompts: list[str], chunks: int) -> torch.Tensor:
        """(N, chunks, max_length) int64 ids: each prompt's BPE ids cut into `chunks` consecutive slices of
        max_length − 2 (75) ids, each slice [BOS] + slice + [EOS] padded with EOS (the pad id); ids past the last
        slice are dropped, empty slices still encoded. chunks = 1 is the plain truncating tokenization; 3 is the
        ControlNet 1.1 anime-lineart encoding (a 3×77 context)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a list of str")
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"chunks must be a positive int, got {chunks!r}")
        width = self.max_length - 2
        rows = []
        for p in prompts:
            ids = self.encode(p)
            for k in range(chunks):
                piece = [BOS_ID] + ids[k * width:(k + 1) * width] + [EOS_ID]
                rows.append(piece + [EOS_ID] * (self.max_length - len(piece)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(prompts), chunks, self.max_length)


class CLIPAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        # k, v, q, out: the checkpoint's key order.
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class CLIPMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick-GELU


class CLIPEncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.self_attn = CLIPAttention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width)
        self.mlp = CLIPMLP(width, hidden)
        self.layer_norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size)
                                    for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, skip: int = 0) -> torch.Tensor:
        """The output of the last layer, or with `skip` = k of the layer k before it."""
        for layer in self.layers[:len(self.layers) - skip]:
            x = layer(x)
        return x


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.hidden_size)
        # Official files (transformers 4.19) also hold `position_ids` (0..76): checked and dropped on load, never
        # stored, so a model built on the meta device has no buffer left to materialise.
        self.register_load_state_dict_pre_hook(self._drop_position_ids)

    def _drop_position_ids(self, module, state_dict, prefix, *args) -> None:
        ids = state_dict.pop(prefix + "position_ids", None)
        if ids is not None and not ids.is_meta and not torch.equal(ids.long().cpu().flatten(),
                                                                   torch.arange(ids.numel())):
            raise ValueError(f"{prefix}position_ids must hold 0..{ids.numel() - 1}")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        if n > self.position_embedding.num_embeddings:
            raise ValueError(f"token sequence of length {n} exceeds {self.position_embedding.num_embeddings}")
        positions = torch.arange(n, device=input_ids.device)[None]
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
        """last_hidden_state (N, L, width), after the final LayerNorm. `clip_skip` = k > 1: hidden state [−k] of
        (embeddings, layer 1, …, layer n) instead, i.e. the output of layer n − k + 1, also through the final
        LayerNorm (SD's "CLIP skip")."""
        layers = len(self.encoder.layers)
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= layers:
            raise ValueError(f"clip_skip must be an int in 1..{layers}, got {clip_skip!r}")
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids), skip=clip_skip - 1))


class CLIPTextModel(nn.Module):
    """Holds `text_model`, the extra level the official key names carry."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.text_model = CLIPTextTransformer(cfg)

    def forward(self, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
        return self.text_model(input_ids, clip_skip)


class FrozenCLIPEmbedder(nn.Module):
    """cond_stage_model: prompts -> (N, 77, width) text embeddings; frozen.

    `chunks` = c > 1: up to c·75 tokens per prompt, encoded as c sequences of 77 in one batch and concatenated
    along the token axis, (N, c·77, width); `clip_skip` = 2: the second-to-last layer's output (then the final
    LayerNorm). The ControlNet 1.1 anime-lineart model was trained with both (c = 3)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.transformer = CLIPTextModel(cfg)
        self.max_length = cfg.max_length
        self._tokenizer: CLIPTokenizer | None = None
        self.requires_grad_(False)

    @property
    def tokenizer(self) -> CLIPTokenizer:
        if self._tokenizer is None:  # the vocabulary takes ~0.5 s to read; only when text is encoded
            self._tokenizer = CLIPTokenizer(self.max_length)
        return self._tokenizer

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(prompts)

    def forward(self, prompts: list[str], chunks: int = 1, clip_skip: int = 1) -> torch.Tensor:
        device = self.transformer.text_model.embeddings.token_embedding.weight.device
        if chunks == 1:
            return self.transformer(self.tokenize(prompts).to(device), clip_skip)
        ids = self.tokenizer.chunked(prompts, chunks).to(device)
        n, _, length = ids.shape
        out = self.transformer(ids.reshape(n * chunks, length), clip_skip)
        return out.reshape(n, chunks * length, out.shape[-1])

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(prompts)
