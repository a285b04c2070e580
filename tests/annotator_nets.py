"""Helpers shared by the OpenPose, MiDaS and segmentation tests."""
import json
import math

import numpy as np
import torch

from annotator.openpose.body import LIMB_PAFS, LIMBS

from conftest import KEYS_DIR


def uninitialised(make):
    """The module with uninitialised tensors: skips the slow random init; tests load weights into it."""
    with torch.device("meta"):
        net = make()
    return net.to_empty(device="cpu").eval()


def assert_official_layout(state: dict, key_file: str, section: str = "keys") -> None:
    """Same keys, in the same order, with the same shapes as the official layout in tests/keys/."""
    keys = json.loads((KEYS_DIR / key_file).read_text())[section]
    assert list(state) == list(keys)
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in keys.items()}


def synthetic_body_maps(people, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """OpenPose body network outputs (PAFs (38, *grid), heatmaps (19, *grid)) for keypoints given in output-grid
    coordinates: a Gaussian per keypoint, unit PAFs along each limb."""
    ys, xs = np.mgrid[: grid[0], : grid[1]].astype(np.float32)
    heat = np.zeros((19, *grid), np.float32)
    paf = np.zeros((38, *grid), np.float32)
    for person in people:
        for part, (px, py) in enumerate(person):
            heat[part] = np.maximum(heat[part], np.exp(-((xs - px) ** 2 + (ys - py) ** 2) / 2))
        for (a, b), (cx, cy) in zip(LIMBS, LIMB_PAFS):
            (ax, ay), (bx, by) = person[a], person[b]
            length = math.hypot(bx - ax, by - ay)
            t = np.clip(((xs - ax) * (bx - ax) + (ys - ay) * (by - ay)) / length**2, 0, 1)
            near = np.hypot(xs - ax - t * (bx - ax), ys - ay - t * (by - ay)) <= 1.0
            paf[cx][near], paf[cy][near] = (bx - ax) / length, (by - ay) / length
    return paf, heat
