"""UniFormer-S backbone (seg variant, global attention in stages 3-4) with the official module keys."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

DIMS = (64, 128, 320, 512)
DEPTHS = (3, 4, 8, 3)
HEAD_DIM = 64
MLP_RATIO = 4


def channels_last_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of an (N, C, H, W) map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Non-overlapping patch conv, then LayerNorm (eps 1e-5) over channels."""

    def __init__(self, patch: int, cin: int, cout: int):
        super().__init__()
        self.norm = nn.LayerNorm(cout)
        self.proj = nn.Conv2d(cin, cout, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last_norm(self.norm, self.proj(x))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2, as Linear layers on tokens or 1×1 convs on maps."""

    def __init__(self, dim: int, conv: bool):
        super().__init__()
        hidden = dim * MLP_RATIO
        self.fc1 = nn.Conv2d(dim, hidden, 1) if conv else nn.Linear(dim, hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1) if conv else nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CBlock(nn.Module):
    """Convolutional block: depthwise 3×3 position conv, BN -> 1×1 -> depthwise 5×5 -> 1×1, BN -> conv MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, conv=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.heads = dim // HEAD_DIM
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class SABlock(nn.Module):
    """Global self-attention block on the flattened map (LayerNorm eps 1e-6)."""

    def __init__(self, dim: int):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, conv=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(n, c, h, w)


class UniFormer(nn.Module):
    """(N, 3, H, W) -> four maps at 1/4, 1/8, 1/16, 1/32 with 64, 128, 320, 512 channels."""

    def __init__(self):
        super().__init__()
        cins = (3,) + DIMS[:-1]
        for i, (cin, dim) in enumerate(zip(cins, DIMS), start=1):
            setattr(self, f"patch_embed{i}", PatchEmbed(4 if i == 1 else 2, cin, dim))
        for i, (dim, depth) in enumerate(zip(DIMS, DEPTHS), start=1):
            block = CBlock if i <= 2 else SABlock
            setattr(self, f"blocks{i}", nn.ModuleList(block(dim) for _ in range(depth)))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=1e-6))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i in range(1, len(DIMS) + 1):
            x = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"blocks{i}"):
                x = block(x)
            features.append(channels_last_norm(getattr(self, f"norm{i}"), x))
        return features
