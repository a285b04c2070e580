"""BEiT (Bao et al., "BEiT: BERT Pre-Training of Image Transformers") as MiDaS v3.1 uses it for DPT_BEiT_L_384.

Plain PyTorch with timm's attribute names, so the published weights load by name: pre-norm blocks with
layer scale (`gamma_1`, `gamma_2`), q and v biases (k has none), a learned relative-position bias table per
block, a class token and no absolute position embedding. MiDaS changes the classifier in two ways, kept
here: any input whose sides are multiples of 16 is accepted, and each block's bias table, trained for the
24×24 grid of a 384×384 input, is bilinearly resized to the (2h−1)×(2w−1) offsets of an h×w patch grid.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

PATCH = 16
CLASS_ENTRIES = 3  # table rows after the patch offsets: class->patch, patch->class, class->class


def relative_position_index(grid: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """(h·w+1, h·w+1) int64 indices into a bias table of (2h−1)·(2w−1) patch offsets + 3 class-token rows.

    Token 0 is the class token; patch tokens follow in row-major order. The patch pair (i, j) uses row
    (dy + h−1)·(2w−1) + (dx + w−1) with (dy, dx) = position(i) − position(j)."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    offsets = (2 * h - 1) * (2 * w - 1)
    index = torch.empty(h * w + 1, h * w + 1, dtype=torch.long, device=device)
    index[1:, 1:] = (ys[:, None] - ys[None, :] + h - 1) * (2 * w - 1) + (xs[:, None] - xs[None, :] + w - 1)
    index[0, :] = offsets  # the class token looking at patches
    index[:, 0] = offsets + 1  # patches looking at the class token
    index[0, 0] = offsets + 2
    return index


class Attention(nn.Module):
    """Multi-head self-attention with a relative-position bias looked up per head."""

    def __init__(self, width: int, heads: int, trained_grid: int):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.trained_grid = (trained_grid, trained_grid)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * trained_grid - 1) ** 2 + CLASS_ENTRIES, heads))
        # Not read by forward (the index is rebuilt for each input's grid). It is a persistent buffer only
        # because the published file stores it (timm 0.6 saved it); its values are checked when loading.
        self.register_buffer("relative_position_index", relative_position_index(self.trained_grid))
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def position_bias(self, grid: tuple[int, int], index: torch.Tensor) -> torch.Tensor:
        """(heads, h·w+1, h·w+1) bias for an h×w grid; the patch-offset table is resized bilinearly
        (align_corners False) when the grid is not the trained one, the class-token rows are kept."""
        table = self.relative_position_bias_table
        offsets, class_rows = table[:-CLASS_ENTRIES], table[-CLASS_ENTRIES:]
        trained = tuple(2 * g - 1 for g in self.trained_grid)
        wanted = (2 * grid[0] - 1, 2 * grid[1] - 1)
        if wanted != trained:
            offsets = offsets.reshape(1, *trained, -1).permute(0, 3, 1, 2)
            offsets = F.interpolate(offsets, size=wanted, mode="bilinear", align_corners=False)
            offsets = offsets.permute(0, 2, 3, 1).reshape(wanted[0] * wanted[1], -1)
            table = torch.cat([offsets, class_rows])
        tokens = grid[0] * grid[1] + 1
        return table[index.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], index: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.position_bias(grid, index)[None]
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, width)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """x + γ1·attn(LN(x)), then x + γ2·mlp(LN(x)) (LayerNorm eps 1e-6)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, trained_grid: int, layer_scale: float = 1e-5):
        super().__init__()
        self.gamma_1 = nn.Parameter(torch.full((width,), layer_scale))
        self.gamma_2 = nn.Parameter(torch.full((width,), layer_scale))
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, trained_grid)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, width * mlp_ratio)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], index: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x), grid, index)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Beit(nn.Module):
    """The transformer; `forward` returns the token sequences after the blocks listed in `taps`."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: int, trained_grid: int, num_classes: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.patch_embed = PatchEmbed(width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, trained_grid) for _ in range(depth))
        # ImageNet classifier of the backbone's origin: unused for depth, kept so the published file loads.
        self.fc_norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, taps: tuple[int, ...]) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """(N, 3, H, W), H and W multiples of 16 -> (tokens after each tap block, patch grid (H/16, W/16))."""
        patches = self.patch_embed(x)
        grid = (patches.shape[2], patches.shape[3])
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), patches.flatten(2).transpose(1, 2)], 1)
        index = relative_position_index(grid, x.device)
        outputs = []
        for i, block in enumerate(self.blocks[: max(taps) + 1]):
            tokens = block(tokens, grid, index)
            if i in taps:
                outputs.append(tokens)
        return outputs, grid
