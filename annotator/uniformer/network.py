"""UniFormer-S + UPerNet (mmseg EncoderDecoder layout) and its mmcv-style weight file."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from annotator.uniformer.backbone import UniFormer
from annotator.uniformer.heads import FCNHead, UPerHead
from annotator.weights import WeightFileError, build_network
from weights.files import WeightFiles


class UniFormerSegmentor(nn.Module):
    """(N, 3, H, W) normalised image -> (N, 150, H/4, W/4) ADE20K logits."""

    def __init__(self):
        super().__init__()
        self.backbone = UniFormer()
        self.decode_head = UPerHead()
        self.auxiliary_head = FCNHead()  # only so that every key of the official file loads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(x))


def read_mmcv_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of an mmcv checkpoint ({"meta": ..., "state_dict": ...}; a bare dict of
    tensors is accepted too), read with weights_only=True; a DataParallel `module.` prefix is dropped."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightFileError(f"cannot read weight file {path} safely: {type(err).__name__}: {err}") from err
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightFileError(f"weight file {path} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_mmcv_file(net: nn.Module, path: str | Path) -> nn.Module:
    try:
        net.load_state_dict(read_mmcv_checkpoint(path))
    except RuntimeError as err:  # missing, unexpected or mis-shaped keys
        raise WeightFileError(f"weight file {path} does not fit {type(net).__name__}: {err}") from err
    return net


def build_segmentor(device: str, random_init: bool, files: WeightFiles | None = None) -> UniFormerSegmentor:
    return build_network(UniFormerSegmentor, "uniformer", device, random_init, files, load=load_mmcv_file, skip_init=True)
