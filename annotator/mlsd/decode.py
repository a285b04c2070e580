"""Turning M-LSD network maps into line segments, and segments into a line map."""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.nn import functional as F

TOP_K = 200  # candidate line centres examined per image


def decode_segments(maps: torch.Tensor, value_threshold: float, distance_threshold: float) -> np.ndarray:
    """(9, h, w) network output at half resolution -> (N, 4) float segments (x0, y0, x1, y1) at full
    resolution. Channel 0 = centre logits, 1..4 = displacements from the centre to the two endpoints.

    Centres are 3×3 local maxima of the sigmoid score among the top 200; a centre is kept when its
    score > value_threshold and its segment is longer than distance_threshold (half-res pixels).
    """
    height, width = maps.shape[-2:]
    score = torch.sigmoid(maps[0].float())
    peaks = F.max_pool2d(score[None, None], 3, stride=1, padding=1)[0, 0] == score
    scores, index = torch.topk((score * peaks).flatten(), min(TOP_K, height * width))
    ys, xs = (index // width).cpu().numpy(), (index % width).cpu().numpy()
    scores = scores.cpu().numpy()
    disp = maps[1:5].float().cpu().numpy()[:, ys, xs].T  # (k, 4): dx0, dy0, dx1, dy1
    length = np.sqrt(np.sum((disp[:, :2] - disp[:, 2:]) ** 2, axis=1))
    keep = (scores > value_threshold) & (length > distance_threshold)
    centres = np.stack([xs, ys, xs, ys], axis=1)[keep]
    return 2 * (centres + disp[keep].astype(np.float64))


def draw_segments(segments: np.ndarray, height: int, width: int) -> np.ndarray:
    """1-px white segments on a black H×W uint8 canvas (endpoints truncated to int)."""
    canvas = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in segments:
        cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
    return canvas
