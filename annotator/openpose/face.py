"""OpenPose face landmarks (ControlNet 1.1): the face CPM network, face boxes from the body keypoints,
and one landmark per heatmap channel.

The network (Simon et al. 2017 / OpenPose face model): the hand network's VGG front up to conv5_3_CPM,
then 6 stages predicting 71 maps (70 landmarks + background). The weight file stores the flat layer
names (`conv1_1.weight`, `Mconv7_stage6.bias`, ...), which are this module's own keys.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from annotator.openpose.network import HAND_FRONT, POOL, refinement_layers
from annotator.openpose.smart_resize import smart_resize

FACE_HEATMAP_CHANNELS = 71
FACE_INPUT_SIZE = 384
FACE_THRESHOLD = 0.05
MIN_BOX = 20
NOSE, EYES, EARS = 0, (14, 15), (16, 17)  # COCO-18 ids
# the half-size of the face box: the largest Chebyshev distance nose-part times this factor
EYE_FACTOR, EAR_FACTOR = 3.0, 1.5


class FaceNet(nn.Module):
    """(N, 3, H, W) BGR in [-0.5, 0.5) -> last-stage heatmaps (N, 71, H/8, W/8)."""

    def __init__(self):
        super().__init__()
        self.front = tuple(layer if layer == POOL else layer[0] for layer in HAND_FRONT)
        for layer in HAND_FRONT:
            if layer != POOL:
                name, cin, cout, k = layer
                self.add_module(name, nn.Conv2d(cin, cout, k, padding=k // 2))
        self.conv6_1_CPM = nn.Conv2d(128, 512, 1)
        self.conv6_2_CPM = nn.Conv2d(512, FACE_HEATMAP_CHANNELS, 1)
        for stage in range(2, 7):
            for name, cin, cout, k in refinement_layers(stage, "", 128 + FACE_HEATMAP_CHANNELS, FACE_HEATMAP_CHANNELS):
                self.add_module(name, nn.Conv2d(cin, cout, k, padding=k // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.front:  # every front conv, conv5_3_CPM included, is followed by ReLU
            x = F.max_pool2d(x, 2, 2) if name == POOL else F.relu(getattr(self, name)(x))
        features = x
        heatmaps = self.conv6_2_CPM(F.relu(self.conv6_1_CPM(features)))
        for stage in range(2, 7):
            h = torch.cat([heatmaps, features], 1)
            for k in range(1, 7):
                h = F.relu(getattr(self, f"Mconv{k}_stage{stage}")(h))
            heatmaps = getattr(self, f"Mconv7_stage{stage}")(h)
        return heatmaps


def face_boxes(candidate: np.ndarray, subset: np.ndarray, height: int, width: int) -> list[tuple[int, int, int]]:
    """(x, y, side) per person with a nose and at least one eye or ear: centred on the nose, half-size
    max(3 × eye distance, 1.5 × ear distance) (Chebyshev), clipped at the top/left, kept if ≥ 20 px.

    Quirk kept from the original: the right/bottom overflow test compares x + half-size (the nose, unless
    clipped at the left) with the image size, so the box is practically never trimmed there; its crop is
    then cut short by the image border and is not square."""
    boxes = []
    for person in subset.astype(int):
        parts = [(p, EYE_FACTOR) for p in EYES if person[p] > -1] + [(p, EAR_FACTOR) for p in EARS if person[p] > -1]
        if person[NOSE] == -1 or not parts:
            continue
        x0, y0 = candidate[person[NOSE]][:2]
        half = 0.0
        for part, factor in parts:
            x1, y1 = candidate[person[part]][:2]
            half = max(half, max(abs(x0 - x1), abs(y0 - y1)) * factor)
        x, y = max(x0 - half, 0), max(y0 - half, 0)
        side_x = width - x if x + half > width else half * 2
        side_y = height - y if y + half > height else half * 2
        side = min(side_x, side_y)
        if side >= MIN_BOX:
            boxes.append((int(x), int(y), int(side)))
    return boxes


@torch.inference_mode()
def face_heatmaps(net: FaceNet, bgr_crop: np.ndarray, device: str = "cpu") -> np.ndarray:
    """(71, h, w) float32 for an h×w BGR crop: resized to 384×384, network, bilinear (align_corners) back."""
    height, width = bgr_crop.shape[:2]
    resized = smart_resize(bgr_crop, (FACE_INPUT_SIZE, FACE_INPUT_SIZE))
    x = torch.from_numpy(resized).permute(2, 0, 1)[None].to(device) / 256.0 - 0.5
    maps = net(x)
    return F.interpolate(maps, (height, width), mode="bilinear", align_corners=True)[0].float().cpu().numpy()


def face_keypoints(heatmaps: np.ndarray) -> np.ndarray:
    """(k, 2) int (x, y): the argmax of every channel whose maximum exceeds 0.05, in channel order.

    All 71 channels are searched, the last (background) one included, and channels without a peak are
    dropped, so a row's index is not its landmark number (both as in the original)."""
    points = []
    for channel in heatmaps:
        if channel.max() > FACE_THRESHOLD:
            y, x = np.unravel_index(np.argmax(channel), channel.shape)
            points.append((x, y))
    return np.array(points, dtype=np.int64).reshape(-1, 2)
