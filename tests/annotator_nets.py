"""Helpers shared by the OpenPose, MiDaS and segmentation tests."""
import json

import torch

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
