"""MiDaS DPT-Hybrid: official key layout and file, parity with controlnet_aux's DPTDepthModel on
identical random weights, depth and normal images on a synthetic depth ramp, the two detectors."""
import math

import numpy as np
import pytest
import torch

from annotator.midas import MidasDepthDetector, MidasNormalDetector, predict_depth
from annotator.midas.network import DPTHybrid
from annotator.midas.postprocess import depth_image, normal_image
from annotator.weights import load_into
from tests.annotator_nets import assert_official_layout, uninitialised

FILE_NAME = "dpt_hybrid-midas-501f0c75.pt"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random weights (scaled to keep activations O(1)) saved as the official .pt file."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in uninitialised(DPTHybrid).state_dict().items():
        if key.endswith("norm.weight") or key.endswith("norm1.weight") or key.endswith("norm2.weight") or key.endswith("norm3.weight"):
            state[key] = 1 + 0.1 * torch.randn(value.shape, generator=gen)
        elif value.ndim == 1:
            state[key] = 0.05 * torch.randn(value.shape, generator=gen)
        else:
            fan_in = value[0].numel() if value.ndim > 1 and key not in ("pretrained.model.cls_token", "pretrained.model.pos_embed") else 1
            state[key] = torch.randn(value.shape, generator=gen) * (1.0 / fan_in) ** 0.5
    path = tmp_path_factory.mktemp("midas") / FILE_NAME
    torch.save(state, path)
    return state, path


def test_key_layout_matches_official():
    assert_official_layout(uninitialised(DPTHybrid).state_dict(), "annotator_keys_midas_dpt_hybrid.json")


def test_official_file_loads_and_matches_controlnet_aux(weights):
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    state, path = weights
    ours = load_into(uninitialised(DPTHybrid), path)
    assert all(torch.equal(v, state[k]) for k, v in ours.state_dict().items())
    with torch.device("meta"):
        reference = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
    reference = reference.to_empty(device="cpu").eval()
    reference.load(path)  # its own loader reads the same file
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        out, expected = ours(x), reference(x)
    error = ((out - expected).abs().max() / expected.abs().max()).item()
    print(f"MiDaS DPT-Hybrid raw output max relative error: {error:.3g}")
    assert out.shape == expected.shape == (1, 64, 96) and expected.max() > 0
    assert error <= 1e-4


def test_position_embedding_follows_the_patch_grid(weights):
    state, _ = weights
    net = uninitialised(DPTHybrid)
    net.load_state_dict(state)
    pos = net.pretrained.position_embedding((24, 24))
    assert torch.allclose(pos, state["pretrained.model.pos_embed"], atol=1e-6)  # trained grid: unchanged
    assert net.pretrained.position_embedding((4, 6)).shape == (1, 1 + 24, 768)


def ramp(height=16, width=24, slope=0.5, offset=1.0):
    return np.tile(offset + slope * np.arange(width, dtype=np.float32), (height, 1))


def test_depth_image_is_min_max_normalised():
    depth = ramp()
    image = depth_image(depth)
    expected = ((depth - depth.min()) / (depth.max() - depth.min()) * 255).astype(np.uint8)
    assert image.dtype == np.uint8 and image.shape == depth.shape
    assert np.array_equal(image, expected) and image[0, 0] == 0 and image[0, -1] == 255
    assert not depth_image(np.full((4, 4), 3.0, np.float32)).any()  # constant: zeros, no NaN


def test_normal_image_on_a_ramp():
    """depth = 1 + 0.5 x: the 3×3 Sobel x-derivative is 8 · 0.5 = 4 inside, y is 0, z = alpha;
    where the normalised depth is below the threshold the normal faces the viewer."""
    depth, alpha, threshold = ramp(), 2 * math.pi, 0.25
    image = normal_image(depth, alpha, threshold)
    norm = math.sqrt(4.0**2 + alpha**2)
    tilted = [int(4.0 / norm * 127.5 + 127.5), 127, int(alpha / norm * 127.5 + 127.5)]
    background = (depth - depth.min()) / (depth.max() - depth.min()) < threshold
    assert background[:, :6].all() and not background[:, 6:].any()
    assert (image[:, 1:6] == [127, 127, 255]).all()
    assert (image[:, 6:-1] == tilted).all()  # channel order x, y, z
    assert tuple(image[0, -1]) == (127, 127, 255)  # border: reflected neighbours cancel the slope
    flatter = normal_image(depth, 20.0, threshold)[5, 10]
    assert flatter[0] < tilted[0] and flatter[2] > tilted[2]


def test_detectors_share_one_network_and_keep_the_image_size():
    depth = MidasDepthDetector(random_init=True)
    normal = MidasNormalDetector(random_init=True)
    assert depth.net is normal.net
    for shape in ((64, 96, 3), (67, 93, 3)):
        image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        for out in (depth(image), normal(image, bg_threshold=0.4, alpha=6.2)):
            assert out.shape == shape and out.dtype == np.uint8
    assert predict_depth(depth.net, np.zeros((67, 93, 3), np.uint8)).shape == (67, 93)


def test_depth_detector_reads_the_official_file_and_feeds_pixels_in_minus_one_to_one(weights, monkeypatch):
    state, path = weights
    monkeypatch.setenv("ANNOTATOR_CKPTS", str(path.parent))
    detector = MidasDepthDetector()
    assert torch.equal(detector.net.state_dict()["scratch.output_conv.4.bias"], state["scratch.output_conv.4.bias"])
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        raw = detector.net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1)[0].numpy()
    expected = ((raw - raw.min()) / (raw - raw.min()).max() * 255).astype(np.uint8)
    out = detector(image)
    assert raw.max() > raw.min() and np.array_equal(out, np.stack([expected] * 3, axis=2))
