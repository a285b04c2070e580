"""OpenPose 1.1 network passes: like 1.0 (pad to a multiple of 8 with 128, /256 - 0.5, ×8 up-sampling,
crop the padding) with every resize done by `smart_resize` instead of bicubic."""
from __future__ import annotations

import numpy as np
import torch

from annotator.openpose.maps import BOX_SIZE, STRIDE, Runner, pad_to_stride
from annotator.openpose.network import HAND_HEATMAP_CHANNELS
from annotator.openpose.smart_resize import smart_resize, smart_resize_k

BODY_SCALE = 0.5  # single body pass at 0.5 · 368 / H
HAND_SCALES = (0.5, 1.0, 1.5, 2.0)  # hand crops are resized to (s · 368)² squares
HAND_MAP_SIZE = 128  # hand maps are averaged at 128×128
# Body inputs of extreme aspect ratio would be tens of thousands of pixels wide; beyond this side the
# scale is lowered to fit (the original has no limit and runs out of memory instead).
MAX_BODY_INPUT_SIDE = 2048


def maps_at_size(run: Runner, bgr: np.ndarray, size: tuple[float, float]) -> np.ndarray:
    """`bgr` smart-resized to size = (height, width), one network pass, maps (h×w×C float32) at that size."""
    resized = smart_resize(bgr, size)
    padded, (pad_h, pad_w) = pad_to_stride(resized)
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / 256 - 0.5)
    out = smart_resize_k(run(x)[0].transpose(1, 2, 0), fx=STRIDE, fy=STRIDE)
    return out[: padded.shape[0] - pad_h, : padded.shape[1] - pad_w]


def body_input_size(height: int, width: int) -> tuple[float, float]:
    """The body pass size: both sides × 0.5 · 368 / H (truncated later), longest side at most 2048,
    each at least 1 px (where the original would ask OpenCV for an empty image)."""
    scale = BODY_SCALE * BOX_SIZE / height
    size = height * scale, width * scale
    if max(size) > MAX_BODY_INPUT_SIDE:
        longest = max(height, width)
        size = height * MAX_BODY_INPUT_SIDE / longest, width * MAX_BODY_INPUT_SIDE / longest
    return max(size[0], 1.0), max(size[1], 1.0)


def body_maps(run: Runner, bgr: np.ndarray) -> np.ndarray:
    """Body network maps (PAFs then heatmaps) smart-resized back to the image's H×W, float64."""
    height, width = bgr.shape[:2]
    maps = maps_at_size(run, bgr, body_input_size(height, width))
    return smart_resize(maps, (height, width)).astype(np.float64)


def hand_maps(run: Runner, bgr_crop: np.ndarray) -> np.ndarray:
    """Hand maps (128×128×22, float64): the mean over the four square passes, each resized to 128×128."""
    total = np.zeros((HAND_MAP_SIZE, HAND_MAP_SIZE, HAND_HEATMAP_CHANNELS))
    for s in HAND_SCALES:
        side = s * BOX_SIZE
        total += smart_resize(maps_at_size(run, bgr_crop, (side, side)), (HAND_MAP_SIZE, HAND_MAP_SIZE)) / len(HAND_SCALES)
    return total
