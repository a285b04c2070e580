"""UniFormer-S + UPerNet segmentation: official key layout, the mmcv-style weight file, shapes through
the network, the input quirk, logits -> ADE20K colours, the detector."""
import argparse
import json

import numpy as np
import pytest
import torch

from annotator.uniformer import CLASSES, PALETTE, UniformerDetector, colorize, prepare
from annotator.uniformer.network import UniFormerSegmentor, build_segmentor, load_mmcv_file
from annotator.util import AnnotatorInputError
from annotator.weights import WeightFileError
from conftest import KEYS_DIR
from tests.annotator_nets import assert_official_layout, uninitialised

FILE_NAME = "upernet_global_small.pth"
META = json.loads((KEYS_DIR / "ade20k_meta.json").read_text())


def random_state(seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in uninitialised(UniFormerSegmentor).state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(160000)
        elif key.endswith("running_var") or (value.ndim == 1 and key.endswith("weight")):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif value.ndim == 1:
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = torch.randn(value.shape, generator=gen) * (1.0 / value[0].numel()) ** 0.5
    return state


def mmcv_checkpoint(state):
    meta = {"CLASSES": tuple(META["CLASSES"]), "PALETTE": META["PALETTE"], "mmseg_version": "0.11.0+", "iter": 160000}
    return {"meta": meta, "state_dict": state}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    state = random_state()
    folder = tmp_path_factory.mktemp("uniformer")
    torch.save(mmcv_checkpoint(state), folder / FILE_NAME)
    return state, folder


def test_key_layout_matches_official():
    assert_official_layout(uninitialised(UniFormerSegmentor).state_dict(), "annotator_keys_uniformer_upernet_global_small.json")


def test_mmcv_file_loads_through_the_hub(weights, monkeypatch):
    state, folder = weights
    monkeypatch.setenv("ANNOTATOR_CKPTS", str(folder))
    net = build_segmentor("cpu", random_init=False)
    assert not net.training
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_bad_files_are_refused_with_the_file_name(weights, tmp_path):
    state, _ = weights
    prefixed = {f"module.{k}": v for k, v in state.items()}  # DataParallel-style names still load
    torch.save({"meta": {}, "state_dict": prefixed}, tmp_path / "prefixed.pth")
    assert torch.equal(load_mmcv_file(uninitialised(UniFormerSegmentor), tmp_path / "prefixed.pth").state_dict()["backbone.norm4.bias"], state["backbone.norm4.bias"])

    partial = {k: v for k, v in state.items() if not k.startswith("auxiliary_head.")}
    torch.save(mmcv_checkpoint(partial), tmp_path / "partial.pth")
    with pytest.raises(WeightFileError, match="(?s)partial.pth.*auxiliary_head.conv_seg.weight"):
        load_mmcv_file(uninitialised(UniFormerSegmentor), tmp_path / "partial.pth")

    unsafe = mmcv_checkpoint(state)
    unsafe["meta"]["config"] = argparse.Namespace(model="upernet")  # arbitrary object: never unpickled
    torch.save(unsafe, tmp_path / "unsafe.pth")
    with pytest.raises(WeightFileError, match="unsafe.pth"):
        load_mmcv_file(uninitialised(UniFormerSegmentor), tmp_path / "unsafe.pth")


def test_shapes_through_the_network(weights):
    state, _ = weights
    net = uninitialised(UniFormerSegmentor)
    net.load_state_dict(state)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = net.backbone(x)
        logits = net(x)
        aux = net.auxiliary_head(features)
    assert [tuple(f.shape) for f in features] == [(1, 64, 16, 24), (1, 128, 8, 12), (1, 320, 4, 6), (1, 512, 2, 3)]
    assert logits.shape == (1, 150, 16, 24) and aux.shape == (1, 150, 4, 6)
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_prepare_swaps_channels_and_normalises_with_rgb_statistics():
    image = np.zeros((40, 60, 3), np.uint8)
    image[..., 0] = 255  # pure red in the RGB input
    x = prepare(image, scale=(120, 80))  # fit box: factor min(120 / 60, 80 / 40) = 2
    assert x.shape == (3, 80, 120) and x.dtype == np.float32
    expected = [(0 - 123.675) / 58.395, (0 - 116.28) / 57.12, (255 - 103.53) / 57.375]  # B, G, R order
    assert np.allclose(x[:, 10, 10], expected, atol=1e-5)
    assert prepare(np.zeros((100, 300, 3), np.uint8), scale=(150, 64)).shape == (3, 50, 150)  # long side bound
    with pytest.raises(AnnotatorInputError, match="aspect ratio"):
        prepare(np.zeros((4, 4000, 3), np.uint8))


def test_palette_and_colouring():
    assert PALETTE.shape == (150, 3) and PALETTE.dtype == np.uint8
    assert PALETTE.tolist() == META["PALETTE"] and CLASSES[2] == "sky"
    assert tuple(PALETTE[0]) == (120, 120, 120) and tuple(PALETTE[2]) == (6, 230, 230)
    logits = torch.zeros(1, 150, 4, 4)
    logits[0, 2, :2] = 5.0  # sky on top
    logits[0, 0, 2:] = 5.0  # wall below
    logits[0, 12, 3, 3] = 50.0  # one strong "person" cell in the corner
    colours = colorize(logits, (8, 8), (16, 24))
    assert colours.shape == (16, 24, 3) and colours.dtype == np.uint8
    assert (colours[:8, :8] == PALETTE[2]).all() and (colours[8:, :8] == PALETTE[0]).all()
    assert tuple(colours[15, 23]) == tuple(PALETTE[12])


def test_detector_returns_palette_colours_at_the_image_size():
    detector = UniformerDetector(random_init=True, scale=(128, 64))
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    out = detector(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert {tuple(c) for c in out.reshape(-1, 3)} <= {tuple(c) for c in PALETTE}
