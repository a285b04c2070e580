"""Network pass shared by body and hand: scale, pad, normalise, run, upsample back to image size."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from annotator.util import AnnotatorInputError

BOX_SIZE = 368  # network input height at scale 1.0
STRIDE = 8  # output maps are 1/8 of the input
PAD_VALUE = 128
MAX_INPUT_SIDE = 8192  # larger scaled inputs (extreme aspect ratios) are refused, not run

# numpy (N, C, h, w) float32 network output for a (1, 3, H, W) float32 input tensor
Runner = Callable[[torch.Tensor], np.ndarray]


def pad_to_stride(img: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad bottom and right to multiples of STRIDE with PAD_VALUE; returns (padded, (pad_h, pad_w))."""
    h, w = img.shape[:2]
    pad_h, pad_w = -h % STRIDE, -w % STRIDE
    padded = cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return padded, (pad_h, pad_w)


def maps_at_scale(run: Runner, bgr: np.ndarray, scale: float) -> np.ndarray:
    """Output maps of one scaled pass, H×W×C float32 at the size of `bgr`."""
    height, width = bgr.shape[:2]
    new_w, new_h = round(width * scale), round(height * scale)
    if min(new_w, new_h) < 1 or max(new_w, new_h) > MAX_INPUT_SIDE:
        raise AnnotatorInputError(
            f"OpenPose cannot run on a {width}×{height} image: scaled to {new_w}×{new_h} px for the "
            f"network; use an aspect ratio closer to 1"
        )
    scaled = cv2.resize(bgr, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    padded, (pad_h, pad_w) = pad_to_stride(scaled)
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / 256 - 0.5)
    out = run(x)[0].transpose(1, 2, 0)
    out = cv2.resize(out, (0, 0), fx=STRIDE, fy=STRIDE, interpolation=cv2.INTER_CUBIC)
    out = out[: padded.shape[0] - pad_h, : padded.shape[1] - pad_w]
    out = cv2.resize(out, (width, height), interpolation=cv2.INTER_CUBIC)
    return out.reshape(height, width, -1)


def averaged_maps(run: Runner, bgr: np.ndarray, scales: Sequence[float]) -> np.ndarray:
    """Mean over scales (each `s` runs the network at height s · BOX_SIZE), float64 H×W×C."""
    total = None
    for s in scales:
        maps = maps_at_scale(run, bgr, s * BOX_SIZE / bgr.shape[0]) / len(scales)
        total = maps.astype(np.float64) if total is None else total + maps
    return total
