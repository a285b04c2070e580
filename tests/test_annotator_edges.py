"""Edge and line detectors: canny, scribble, HED (+ nms, fake scribble), M-LSD.

Networks are checked against controlnet_aux's implementations on identical random weights, and
against the official key layouts in tests/keys/.
"""
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from annotator.canny import CannyDetector
from annotator.hed import FakeScribbleDetector, HEDDetector, fuse_sides, nms
from annotator.hed.network import ControlNetHED
from annotator.hed.postprocess import fake_scribble
from annotator.mlsd import MLSDDetector, network_input
from annotator.mlsd.decode import decode_segments, draw_segments
from annotator.mlsd.network import MobileV2MLSDLarge
from annotator.scribble import ScribbleDetector, scribble_from_canvas
from annotator.util import AnnotatorInputError
from annotator.weights import WeightFileError, load_into
from conftest import KEYS_DIR

KEY_FILES = {"hed": "annotator_keys_hed.json", "mlsd": "annotator_keys_mlsd_large.json"}
NETWORKS = {"hed": ControlNetHED, "mlsd": MobileV2MLSDLarge}
FILE_NAMES = {"hed": "ControlNetHED.pth", "mlsd": "mlsd_large_512_fp32.pth"}


def official_keys(name):
    return json.loads((KEYS_DIR / KEY_FILES[name]).read_text())["keys"]


def random_state(name, seed=0):
    """A state dict in the official layout with non-trivial values (incl. BatchNorm statistics)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in NETWORKS[name]().state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var") or (key.endswith(".weight") and value.ndim == 1):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif key == "norm":
            state[key] = 50 + 100 * torch.rand(value.shape, generator=gen)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
        else:  # conv kernels: variance-preserving scale
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / fan_in) ** 0.5
            if "projection" in key:  # HED features are on the 0..255 pixel scale: keep logits unsaturated
                state[key] /= 100.0
    return state


def reference_network(name):
    """controlnet_aux's implementation (imported late: importing controlnet_aux takes seconds)."""
    if name == "hed":
        from controlnet_aux.hed import ControlNetHED_Apache2

        return ControlNetHED_Apache2()
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return MobileV2_MLSD_Large()


def network_pair(name, seed=0):
    """(ours, controlnet_aux's) in eval mode, holding the same random weights."""
    state = random_state(name, seed)
    pair = NETWORKS[name](), reference_network(name)
    for net in pair:
        net.load_state_dict(state)
        net.eval()
    return pair


def detector_pair(name, seed):
    """(our detector, controlnet_aux's detector), holding the same random weights."""
    from controlnet_aux.hed import HEDdetector
    from controlnet_aux.mlsd import MLSDdetector

    ours = (HEDDetector if name == "hed" else MLSDDetector)(random_init=True)
    ours_net, ref_net = network_pair(name, seed)
    ours.net.load_state_dict(ours_net.state_dict())
    return ours, (HEDdetector if name == "hed" else MLSDdetector)(ref_net)


def relative_error(ours, reference):
    return float((ours - reference).abs().max() / reference.abs().max())


def random_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    smooth = cv2.resize(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8), (width, height))
    smooth[height // 3 : height // 2, width // 4 : 3 * width // 4] = (250, 240, 20)  # a sharp bright bar
    return smooth


# --- canny ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("step, expect_edges", [(45, False), (55, True)])
def test_canny_step_edge_thresholds(step, expect_edges):
    # A vertical step of height d gives an L1 Sobel magnitude of 4·d on both sides of the step:
    # 180 (< high threshold 200, weak only -> dropped) or 220 (strong -> one edge column).
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, 16:] = step
    edges = CannyDetector()(img, 100, 200)
    assert edges.shape == (32, 32, 3) and edges.dtype == np.uint8
    if expect_edges:
        assert (edges[:, 15] == 255).all() and edges[:, :15].max() == 0 and edges[:, 16:].max() == 0
    else:
        assert edges.max() == 0


def test_canny_uses_the_colour_gradient():
    # A red-only step of 60: 4·60 = 240 > 200 per channel, but only 0.299·60 ≈ 18 in grey.
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, 16:, 0] = 60
    edges = CannyDetector()(img, 100, 200)
    assert (edges[:, 15] == 255).all() and edges.sum() == 255 * 3 * 32


# --- scribble -------------------------------------------------------------------------------------


def test_scribble_threshold_on_min_channel():
    img = np.array([[[100, 200, 200], [126, 255, 255], [127, 255, 255], [200, 200, 200], [0, 0, 0]]], np.uint8)
    out = ScribbleDetector()(img)
    assert out[0, :, 0].tolist() == [255, 255, 0, 0, 255]
    assert (out == out[:, :, :1]).all()


def canvas_layer(height, width, strokes):
    layer = np.zeros((height, width, 4), np.uint8)
    for (y, x), colour in strokes.items():
        layer[y, x] = colour + (255,)
    return layer


def test_scribble_from_canvas_uses_layer_alpha():
    white = np.full((20, 24, 3), 255, np.uint8)
    # a white stroke and a black stroke: both count, the colour does not matter
    layer = canvas_layer(20, 24, {(3, 4): (255, 255, 255), (10, 11): (0, 0, 0)})
    out = scribble_from_canvas({"background": white, "layers": [layer], "composite": white})
    assert out.shape == (20, 24, 3) and out.dtype == np.uint8
    assert sorted(zip(*np.nonzero(out[:, :, 0]))) == [(3, 4), (10, 11)]


def test_scribble_from_canvas_merges_layers_and_falls_back_to_composite():
    a = canvas_layer(20, 24, {(1, 1): (0, 0, 0)})
    b = canvas_layer(20, 24, {(2, 2): (0, 0, 0)})
    assert np.count_nonzero(scribble_from_canvas({"layers": [a, b]})[:, :, 0]) == 2
    composite = np.full((20, 24, 3), 255, np.uint8)
    composite[5, 6] = (30, 30, 30)
    out = scribble_from_canvas({"background": None, "layers": [], "composite": composite})
    assert list(zip(*np.nonzero(out[:, :, 0]))) == [(5, 6)]
    rgb_layer = np.zeros((20, 24, 3), np.uint8)  # image_mode="RGB": layers carry no alpha
    out = scribble_from_canvas({"layers": [rgb_layer], "composite": Image.fromarray(composite)})
    assert list(zip(*np.nonzero(out[:, :, 0]))) == [(5, 6)]
    blank = scribble_from_canvas({"layers": [np.zeros((20, 24, 4), np.uint8)], "composite": composite})
    assert blank.max() == 0  # untouched canvas layer: nothing drawn


@pytest.mark.parametrize("value", [None, np.zeros((20, 20, 3), np.uint8), {"layers": [], "composite": None}])
def test_scribble_from_canvas_rejects_bad_values(value):
    with pytest.raises(AnnotatorInputError):
        scribble_from_canvas(value)


# --- nms / fake scribble --------------------------------------------------------------------------


def nms_by_definition(x, t, sigma):
    """Pixel loop over the rule: blurred value kept where it is >= both neighbours along any of the
    four directions (outside the image counts as lower), then thresholded."""
    b = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    h, w = b.shape
    out = np.zeros((h, w), np.uint8)
    for y in range(h):
        for x_ in range(w):
            for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                nb = [b[y + s * dy, x_ + s * dx] for s in (-1, 1) if 0 <= y + s * dy < h and 0 <= x_ + s * dx < w]
                if all(b[y, x_] >= v for v in nb):
                    out[y, x_] = 255 if b[y, x_] > t else 0
                    break
    return out


def test_nms_matches_its_definition():
    rng = np.random.default_rng(1)
    x = cv2.resize(rng.integers(0, 256, (6, 7), dtype=np.uint8), (28, 24), interpolation=cv2.INTER_CUBIC)
    expected = nms_by_definition(x, 127, 1.5)
    assert expected.any() and not expected.all()
    assert (nms(x, 127, 1.5) == expected).all()


def test_nms_keeps_a_thick_band_and_drops_a_thin_line():
    band = np.zeros((40, 33, 3), np.uint8)
    band[:, 12:21] = 255  # blurred mass > 1/2 exactly on columns 12..20 (sigma 3)
    out = nms(band, 127, 3.0)
    assert out.shape == band.shape
    assert (np.nonzero(out[20, :, 0])[0] == np.arange(12, 21)).all() and (out == out[:1]).all()
    line = np.zeros((40, 33), np.uint8)
    line[:, 16] = 255  # blurred peak 255·g(0) ≈ 34 < 127
    assert nms(line, 127, 3.0).max() == 0


def test_fake_scribble_widens_by_blur_then_binarises():
    band = np.zeros((40, 33, 3), np.uint8)
    band[:, 12:21] = 255
    out = fake_scribble(band)
    # the 9-column band blurred with sigma 3 stays > 4 (of 255) up to 6 columns out on each side
    assert set(np.unique(out)) == {0, 255}
    assert (np.nonzero(out[20, :, 0])[0] == np.arange(6, 27)).all() and (out == out[:1]).all()


# --- HED -----------------------------------------------------------------------------------------


def test_hed_fusion_averages_resized_sides_then_sigmoid():
    h, w = 32, 48
    sides = [np.full((h // 2**i, w // 2**i), v, np.float32) for i, v in enumerate([0.0, 2.0, -1.0, 4.0, 0.0])]
    assert (fuse_sides(sides, h, w) == int(255 / (1 + np.exp(-1.0)))).all()  # sigmoid(1)·255 = 186.4
    sides[0][:, : w // 2] = -100.0  # left half: mean -19 -> 0
    fused = fuse_sides(sides, h, w)
    assert (fused[:, : w // 2 - 1] == 0).all() and (fused[:, w // 2 + 1 :] == 186).all()


@torch.inference_mode()
def test_hed_network_matches_controlnet_aux():
    ours, ref = network_pair("hed")
    x = torch.from_numpy(random_image(64, 80)).permute(2, 0, 1)[None].float()
    for a, b in zip(ours(x), ref(x), strict=True):
        assert a.shape == b.shape
        assert relative_error(a, b) <= 1e-4


def test_hed_and_fake_scribble_detectors_match_controlnet_aux():
    hed, reference = detector_pair("hed", seed=3)
    img = random_image(64, 64)
    ours = hed(img)
    assert ours.shape == (64, 64, 3) and 10 < ours.mean() < 245
    assert np.abs(ours.astype(int) - reference(img, 64, 64, output_type="np")).max() <= 1
    fake = FakeScribbleDetector(random_init=True)
    fake.prepare = hed
    assert (fake(img) == reference(img, 64, 64, output_type="np", scribble=True)).mean() > 0.999


# --- M-LSD ----------------------------------------------------------------------------------------


@torch.inference_mode()
def test_mlsd_network_matches_controlnet_aux():
    ours, ref = network_pair("mlsd")
    x = network_input(random_image(64, 96))
    assert x.shape == (1, 4, 64, 96) and torch.allclose(x[0, 3], torch.tensor(1 / 127.5 - 1))
    a, b = ours(x), ref(x)
    assert a.shape == b.shape == (1, 9, 32, 48)
    assert relative_error(a, b) <= 1e-4


def test_mlsd_detector_matches_controlnet_aux():
    detector, reference = detector_pair("mlsd", seed=5)
    img = random_image(128, 128)
    ours = detector(img, value_threshold=0.1, distance_threshold=0.1)
    assert ours.max() == 255, "random weights should give some lines"
    assert (ours == reference(img, thr_v=0.1, thr_d=0.1, detect_resolution=128, image_resolution=128, output_type="np")).all()


def test_mlsd_decoding_hand_computed():
    maps = torch.zeros(9, 8, 8)
    maps[0] = -10.0
    maps[0, 2, 3], maps[1:5, 2, 3] = 2.0, torch.tensor([-1.0, 0.0, 2.0, 1.0])  # kept
    maps[0, 2, 4], maps[1:5, 2, 4] = 1.5, torch.tensor([0.0, 0.0, 5.0, 0.0])  # next to a higher peak
    maps[0, 5, 5], maps[1:5, 5, 5] = 0.0, torch.tensor([0.02, 0.0, 0.0, 0.0])  # too short
    maps[0, 6, 1], maps[1:5, 6, 1] = -3.0, torch.tensor([0.0, 0.0, 4.0, 0.0])  # score 0.047 too low
    segments = decode_segments(maps, value_threshold=0.1, distance_threshold=0.1)
    assert segments.tolist() == [[4.0, 4.0, 10.0, 6.0]]  # 2 × ((3, 2) + displacements)
    assert decode_segments(maps, value_threshold=0.01, distance_threshold=0.1).shape == (2, 4)
    assert decode_segments(maps, value_threshold=1.5, distance_threshold=0.1).shape == (0, 4)
    canvas = draw_segments(segments, 16, 16)
    ys, xs = np.nonzero(canvas)
    assert len(xs) == 7 and canvas[4, 4] == canvas[6, 10] == 255 and set(xs) == set(range(4, 11))


def test_mlsd_sizes_and_empty_maps():
    detector, _ = detector_pair("mlsd", seed=5)
    assert network_input(random_image(67, 93)).shape == (1, 4, 80, 96)  # padded to multiples of 16
    assert detector(random_image(67, 93)).shape == (67, 93, 3)
    assert detector(random_image(16, 16)).shape == (16, 16, 3)  # 8×8 = 64 < 200 candidate centres
    img = random_image(128, 128)
    assert detector(img).max() == 255
    assert detector(img, value_threshold=1.0).max() == 0  # sigmoid scores never exceed 1


# --- key layouts and weight files -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["hed", "mlsd"])
def test_key_layout_is_official(name):
    expected = official_keys(name)
    state = NETWORKS[name]().state_dict()
    assert list(state) == list(expected)
    for key, tensor in state.items():
        assert list(tensor.shape) == expected[key]["shape"], key
        assert str(tensor.dtype).removeprefix("torch.") == expected[key]["dtype"], key


def write_official_file(directory, name, dtype):
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in random_state(name, seed=11).items()}
    path = directory / FILE_NAMES[name]
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("name, dtype", [("hed", torch.float16), ("mlsd", torch.float32)])
def test_official_file_loads(tmp_path, monkeypatch, name, dtype):
    path, state = write_official_file(tmp_path, name, dtype)
    monkeypatch.setenv("ANNOTATOR_CKPTS", str(tmp_path))
    detector = (HEDDetector if name == "hed" else MLSDDetector)()
    loaded = detector.net.state_dict()
    for key, value in state.items():
        assert loaded[key].dtype == (torch.float32 if value.is_floating_point() else value.dtype)
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key
    assert detector(random_image(64, 64)).shape == (64, 64, 3)


def test_mismatched_file_names_the_file(tmp_path):
    path, state = write_official_file(tmp_path, "hed", torch.float16)
    del state["block5.projection.bias"]
    torch.save(state, path)
    with pytest.raises(WeightFileError, match="ControlNetHED.pth.*block5.projection.bias"):
        load_into(ControlNetHED(), path)
    state = random_state("hed")
    state["norm"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(WeightFileError, match="wrong shape.*norm"):
        load_into(ControlNetHED(), path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"norm": torch.zeros(1, 3, 1, 1), "extra": np.zeros(3)}, path)  # needs unpickling numpy
    with pytest.raises(WeightFileError, match="evil.pth"):
        load_into(ControlNetHED(), path)
