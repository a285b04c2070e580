"""PiDiNet soft edges (ControlNet 1.1 "SoftEdge_PIDI"): white edges on black, optionally quantised ("safe"),
and the scribble made from them ("Scribble_PIDI")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from annotator.hed.postprocess import fake_scribble
from annotator.pidinet.network import PiDiNet
from annotator.util import HWC3
from annotator.v11_util import safe_step
from annotator.weights import build_network, load_state, read_state_dict

__all__ = ["PiDiNet", "PidiNetDetector", "ScribblePidiDetector", "load_pidinet_weights"]


def load_pidinet_weights(net: PiDiNet, path: str | Path) -> PiDiNet:
    """table5_pidinet.pth: the weights sit under `state_dict`, with DataParallel `module.` prefixes."""
    state = {key.replace("module.", ""): value for key, value in read_state_dict(path, wrapper="state_dict").items()}
    return load_state(net, state, path)


class PidiNetDetector:
    def __init__(self, device: str = "cpu", random_init: bool = False, files=None):
        self.device = device
        self.net = build_network(PiDiNet, "pidinet", device, random_init, files, load=load_pidinet_weights)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, safe: bool = False) -> np.ndarray:
        """RGB H×W×3 uint8 -> H×W×3 uint8 fused edge map; `safe` keeps three levels (0, 127, 255)."""
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # the network was trained on BGR
        x = torch.from_numpy(bgr).to(self.device, torch.float32).permute(2, 0, 1)[None]
        edge = self.net(x / 255.0)[-1][0, 0].float().cpu().numpy()
        if safe:
            edge = safe_step(edge)
        return HWC3((edge * 255.0).clip(0, 255).astype(np.uint8))


class ScribblePidiDetector:
    """PiDiNet (not safe), then, after the app resized the map to the output size, the fake-scribble
    steps of the scribble app: nms(127, sigma 3), Gaussian blur sigma 3, > 4 -> 255."""

    def __init__(self, device: str = "cpu", random_init: bool = False, files=None):
        self.prepare = PidiNetDetector(device, random_init, files)

    @staticmethod
    def finish(edge_map: np.ndarray) -> np.ndarray:
        return fake_scribble(edge_map)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.finish(self.prepare(image))
