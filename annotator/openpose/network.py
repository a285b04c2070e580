"""OpenPose networks: the CMU COCO-18 body model and the hand model.

Module keys are the official ones (`model0.conv1_1.weight`, `model6_2.Mconv7_stage6_L2.bias`, ...);
the weight files store flat Caffe names (`conv1_1.weight`), mapped in `from_caffe_names`.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from annotator.weights import WeightFileError, build_network, read_state_dict
from weights.files import WeightFiles

POOL = "pool"
# VGG-19 front shared by both networks: (name, in, out, kernel) or POOL (2×2 max-pool, stride 2)
VGG_FRONT = (
    ("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), POOL,
    ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3), POOL,
    ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3), POOL,
    ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3),
)
BODY_FRONT = VGG_FRONT + (("conv4_3_CPM", 512, 256, 3), ("conv4_4_CPM", 256, 128, 3))
HAND_FRONT = VGG_FRONT + (
    ("conv4_3", 512, 512, 3), ("conv4_4", 512, 512, 3),
    ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3), ("conv5_3_CPM", 512, 128, 3),
)
BODY_PAF_CHANNELS, BODY_HEATMAP_CHANNELS, HAND_HEATMAP_CHANNELS = 38, 19, 22


def conv_block(layers, final_relu: bool = False) -> nn.Sequential:
    """Convs (padding k // 2) each followed by ReLU, except the last one unless `final_relu`."""
    last_conv = max(i for i, layer in enumerate(layers) if layer != POOL)
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for i, layer in enumerate(layers):
        if layer == POOL:
            modules[f"pool{i}"] = nn.MaxPool2d(2, 2)
            continue
        name, cin, cout, k = layer
        modules[name] = nn.Conv2d(cin, cout, k, padding=k // 2)
        if final_relu or i != last_conv:
            modules[f"relu{i}"] = nn.ReLU(inplace=True)
    return nn.Sequential(modules)


def refinement_layers(stage: int, suffix: str, cin: int, cout: int):
    """Stages 2-6: five 7×7 convs, a 1×1 to 128 and a 1×1 to the output maps."""
    shapes = [(cin, 128, 7)] + [(128, 128, 7)] * 4 + [(128, 128, 1), (128, cout, 1)]
    return tuple((f"Mconv{k}_stage{stage}{suffix}", *shape) for k, shape in enumerate(shapes, start=1))


class BodyPoseNet(nn.Module):
    """(N, 3, H, W) BGR in [-0.5, 0.5) -> (PAFs (N, 38, H/8, W/8), heatmaps (N, 19, H/8, W/8))."""

    def __init__(self):
        super().__init__()
        self.model0 = conv_block(BODY_FRONT, final_relu=True)
        for branch, cout in ((1, BODY_PAF_CHANNELS), (2, BODY_HEATMAP_CHANNELS)):
            setattr(self, f"model1_{branch}", conv_block((
                *((f"conv5_{k}_CPM_L{branch}", 128, 128, 3) for k in (1, 2, 3)),
                (f"conv5_4_CPM_L{branch}", 128, 512, 1), (f"conv5_5_CPM_L{branch}", 512, cout, 1),
            )))
            cin = 128 + BODY_PAF_CHANNELS + BODY_HEATMAP_CHANNELS
            for stage in range(2, 7):
                # quirk: the original's no-ReLU list names Mconv7_stage6_L1 twice and omits
                # Mconv7_stage6_L2, so the final heatmaps are ReLU-clamped; its peaks depend on it.
                clamp = stage == 6 and branch == 2
                layers = refinement_layers(stage, f"_L{branch}", cin, cout)
                setattr(self, f"model{stage}_{branch}", conv_block(layers, final_relu=clamp))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model0(x)
        pafs, heatmaps = self.model1_1(features), self.model1_2(features)
        for stage in range(2, 7):
            h = torch.cat([pafs, heatmaps, features], 1)
            pafs, heatmaps = getattr(self, f"model{stage}_1")(h), getattr(self, f"model{stage}_2")(h)
        return pafs, heatmaps


class HandPoseNet(nn.Module):
    """(N, 3, H, W) BGR in [-0.5, 0.5) -> heatmaps (N, 22, H/8, W/8) (21 keypoints + background)."""

    def __init__(self):
        super().__init__()
        self.model1_0 = conv_block(HAND_FRONT, final_relu=True)
        self.model1_1 = conv_block((("conv6_1_CPM", 128, 512, 1), ("conv6_2_CPM", 512, HAND_HEATMAP_CHANNELS, 1)))
        for stage in range(2, 7):
            layers = refinement_layers(stage, "", 128 + HAND_HEATMAP_CHANNELS, HAND_HEATMAP_CHANNELS)
            setattr(self, f"model{stage}", conv_block(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model1_0(x)
        heatmaps = self.model1_1(features)
        for stage in range(2, 7):
            heatmaps = getattr(self, f"model{stage}")(torch.cat([heatmaps, features], 1))
        return heatmaps


def from_caffe_names(net: nn.Module, flat: dict[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """Module keys `<block>.<layer>.<param>` filled from the file's flat `<layer>.<param>` names."""
    wanted = {key: key.split(".", 1)[1] for key in net.state_dict()}
    missing = sorted(name for name in wanted.values() if name not in flat)
    unexpected = sorted(set(flat) - set(wanted.values()))
    if missing or unexpected:
        raise WeightFileError(
            f"weight file {source} does not match {type(net).__name__}: {len(missing)} missing key(s) "
            f"{missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}"
        )
    return {key: flat[name] for key, name in wanted.items()}


def load_caffe_file(net: nn.Module, path: str | Path) -> nn.Module:
    state = from_caffe_names(net, read_state_dict(path), path)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:  # shape mismatches
        raise WeightFileError(f"weight file {path} does not fit {type(net).__name__}: {err}") from err
    return net


def build_pose_network(make, weight_key: str, device: str, random_init: bool, files: WeightFiles | None = None) -> nn.Module:
    """Like `annotator.weights.build_network`, for files with flat Caffe names."""
    return build_network(make, weight_key, device, random_init, files, load=load_caffe_file, skip_init=True)


def network_runner(net: nn.Module, device: str):
    """`run(x) -> maps` for the estimators: the network's outputs (concatenated when it has two) as float32 numpy."""
    def run(x: torch.Tensor):
        out = net(x.to(device))
        out = torch.cat(out, 1) if isinstance(out, tuple) else out
        return out.float().cpu().numpy()

    return run
