"""ADE20K semantic segmentation (UniFormer-S + UPerNet) coloured with the ADE20K palette."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from annotator.uniformer.network import UniFormerSegmentor, build_segmentor, read_mmcv_checkpoint
from annotator.util import AnnotatorInputError
from weights.files import WeightFiles

__all__ = ["UniformerDetector", "UniFormerSegmentor", "read_mmcv_checkpoint", "PALETTE", "CLASSES",
           "prepare", "colorize"]

_META = json.loads((Path(__file__).with_name("ade20k_meta.json")).read_text())
CLASSES: tuple[str, ...] = tuple(_META["CLASSES"])
PALETTE = np.array(_META["PALETTE"], dtype=np.uint8)  # (150, 3) RGB
SCALE = (2048, 512)  # fit box (long side, short side) of mmseg's test resize, aspect kept
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
MIN_SIDE = 32  # the backbone downsamples 32×


def prepare(image: np.ndarray, scale: tuple[int, int] = SCALE) -> np.ndarray:
    """H×W×3 uint8 -> normalised (3, h, w) float32 network input, resized (bilinear) to fit `scale`."""
    height, width = image.shape[:2]
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    size = int(width * factor + 0.5), int(height * factor + 0.5)
    if min(size) < MIN_SIDE:
        raise AnnotatorInputError(
            f"segmentation cannot run on a {width}×{height} image (resized to {size[0]}×{size[1]}, "
            f"under {MIN_SIDE} px); use an aspect ratio closer to 1"
        )
    resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    # quirk: mmseg treats the RGB array as BGR and "converts" it, so the net sees B, G, R
    # normalised with the R, G, B statistics; the seg ControlNet was trained on maps made this way.
    x = (resized[:, :, ::-1].astype(np.float32) - MEAN) * (1 / STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def colorize(logits: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> np.ndarray:
    """(1, 150, h, w) logits -> H×W×3 uint8 RGB: bilinear to the network input size, then to the
    image size (mmseg's two resizes), argmax, ADE20K palette at full opacity."""
    logits = F.interpolate(logits, size=input_size, mode="bilinear", align_corners=False)
    if tuple(input_size) != tuple(output_size):
        logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
    return PALETTE[logits[0].argmax(0).cpu().numpy()]


class UniformerDetector:
    """`scale` is mmseg's test resize box; the default (2048, 512) is the original's (cost: a
    512-px short side whatever the input size)."""

    def __init__(self, device: str = "cpu", random_init: bool = False, files: WeightFiles | None = None,
                 scale: tuple[int, int] = SCALE):
        self.device, self.scale = device, scale
        self.net = build_segmentor(device, random_init, files)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(prepare(image, self.scale))[None].to(self.device)
        return colorize(self.net(x).float(), x.shape[2:], image.shape[:2])
