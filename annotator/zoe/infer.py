"""ZoeDepth inference as the ControlNet 1.1 detector runs it: reflect padding and flip averaging, then
the depth image (percentile window, near = bright)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def predict_padded(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reflect-pad by ⌊√(h/2)·3⌋ rows and ⌊√(w/2)·3⌋ columns on each side (against border artefacts),
    predict, bicubic-resize (align_corners False) to the padded size, crop back to (N, 1, h, w)."""
    height, width = x.shape[2:]
    # reflect padding must stay below the side; only reachable for sides under 5 px
    pad_h = min(int(math.sqrt(height / 2) * 3), height - 1)
    pad_w = min(int(math.sqrt(width / 2) * 3), width - 1)
    x = F.pad(x, [pad_w, pad_w, pad_h, pad_h], mode="reflect")
    out = net(x)
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[2:], mode="bicubic", align_corners=False)
    return out[:, :, pad_h:pad_h + height, pad_w:pad_w + width]


@torch.inference_mode()
def infer(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) metric depth, averaged with the mirrored image's."""
    mirrored = predict_padded(net, torch.flip(x, dims=[3]))
    return (predict_padded(net, x) + torch.flip(mirrored, dims=[3])) / 2


def predict_depth(net: nn.Module, image: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """H×W×3 uint8 RGB -> H×W float32 metric depth (RGB / 255 is the only input normalisation here)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float().to(device) / 255.0
    return infer(net, x.permute(2, 0, 1)[None])[0, 0].cpu().numpy()


def depth_image(depth: np.ndarray) -> np.ndarray:
    """H×W uint8: 1 − (d − p2) / (p85 − p2) with p2, p85 the 2nd and 85th percentiles, ×255, clipped.

    Near is bright; the farthest 15 % are black, the nearest 2 % white. The in-place float32 steps are
    the original's, so the rounding matches it. A window of zero width (p85 = p2, where the original
    divides by zero) maps depths up to p2 to white and the rest to black."""
    vmin, vmax = np.percentile(depth, 2), np.percentile(depth, 85)
    if not vmax > vmin:
        return np.where(depth <= vmin, 255, 0).astype(np.uint8)
    depth = depth.astype(np.float32)  # a copy
    depth -= vmin
    depth /= vmax - vmin
    depth = 1.0 - depth
    return (depth * 255.0).clip(0, 255).astype(np.uint8)
