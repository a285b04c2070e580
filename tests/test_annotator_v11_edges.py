"""ControlNet 1.1 edge/line annotators: lineart (fine, coarse), lineart anime, PiDiNet and HED soft edges
(with "safe"), content/colour shuffle, and the apps' own tile hint and inpaint mask.

Networks: official key layouts (tests/keys/), strict loading from files written in the official format
(wrapper entry and `module.` prefixes included, read with weights_only=True), and parity with
controlnet_aux on identical random weights. Where controlnet_aux departs from the original (lineart
polarity, shuffle sizing/seeding, colour-shuffle range), the original's behaviour is tested directly.
"""
import json

import cv2
import numpy as np
import pytest
import torch

from annotator.hed import HEDDetector
from annotator.hed.network import ControlNetHED
from annotator.hed.softedge import SoftEdgeHEDDetector, edge_probability
from annotator.lineart import LineartDetector, LineartGenerator
from annotator.lineart_anime import AnimeUNet, LineartAnimeDetector, network_size
from annotator.pidinet import PiDiNet, PidiNetDetector, ScribblePidiDetector
from annotator.pidinet.pdc import PixelDifferenceConv2d
from annotator.processing import inpaint_mask, tile_control
from annotator.shuffle import ColorShuffleDetector, ContentShuffleDetector, shuffle_flow
from annotator.v11_util import make_noise_disk, safe_step
from annotator.weights import WeightFileError
from annotator_nets import assert_official_layout, uninitialised
from conftest import KEYS_DIR

KEY_FILES = {
    "lineart": "annotator_keys_lineart.json",
    "lineart_coarse": "annotator_keys_lineart_coarse.json",
    "lineart_anime": "annotator_keys_lineart_anime.json",
    "pidinet": "annotator_keys_pidinet.json",
}
NETWORKS = {
    "lineart": LineartGenerator, "lineart_coarse": LineartGenerator, "lineart_anime": AnimeUNet, "pidinet": PiDiNet,
}


class Files:
    """A weight-file resolver for build_network: weight key -> path."""

    def __init__(self, **paths):
        self.paths = paths

    def resolve(self, key):
        return self.paths[key]


def random_state(name, seed=0):
    """Official key layout, variance-preserving random convs, non-zero biases (no zero-initialised layer)."""
    keys = json.loads((KEYS_DIR / KEY_FILES[name]).read_text())["keys"]
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, spec in keys.items():
        shape = spec["shape"]
        if len(shape) == 1:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return state


def random_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    smooth = cv2.resize(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8), (width, height))
    smooth[height // 3 : height // 2, width // 4 : 3 * width // 4] = (250, 240, 20)  # a sharp bright bar
    return smooth


def relative_error(ours, reference):
    return float((ours - reference).abs().max() / reference.abs().max())


def aux_network(name):
    """controlnet_aux's network for `name`, uninitialised (imported late: controlnet_aux is slow to import)."""
    if name in ("lineart", "lineart_coarse"):
        from controlnet_aux.lineart import Generator

        return uninitialised(lambda: Generator(3, 1, 3))
    if name == "lineart_anime":
        import functools

        from controlnet_aux.lineart_anime import UnetGenerator

        norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
        return uninitialised(lambda: UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False))
    from controlnet_aux.pidi.model import pidinet

    return uninitialised(pidinet)


def network_pair(name, seed=0):
    state = random_state(name, seed)
    pair = uninitialised(NETWORKS[name]), aux_network(name)
    for net in pair:
        net.load_state_dict(state)
    return pair


def run_aux(detector, img, **params):
    """A controlnet_aux detector with both resolutions = the short side of `img` (a multiple of 64), so its
    resize_image calls keep the size and the map is comparable pixel by pixel."""
    side = min(img.shape[:2])
    return detector(img, detect_resolution=side, image_resolution=side, output_type="np", **params)


def our_detector(cls, name, seed, **kwargs):
    detector = cls(random_init=True, **kwargs)
    detector.net.load_state_dict(random_state(name, seed))
    return detector


# --- key layouts and official files ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KEY_FILES))
def test_key_layout_is_official(name):
    assert_official_layout(uninitialised(NETWORKS[name]).state_dict(), KEY_FILES[name])


def assert_loaded(net, state):
    loaded = net.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == torch.float32 and torch.equal(loaded[key], value.float()), key


@pytest.mark.parametrize(
    "coarse, filename, dtype", [(False, "sk_model.pth", torch.float32), (True, "sk_model2.pth", torch.float16)]
)
def test_lineart_official_files_load(tmp_path, coarse, filename, dtype):
    name = "lineart_coarse" if coarse else "lineart"
    state = {k: v.to(dtype) for k, v in random_state(name, seed=11).items()}
    torch.save(state, tmp_path / filename)  # plain state dict, no prefix
    detector = LineartDetector(files=Files(**{name: tmp_path / filename}), coarse=coarse)
    assert_loaded(detector.net, state)


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_lineart_anime_official_file_loads(tmp_path, prefix):
    state = random_state("lineart_anime", seed=12)
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "netG.pth")
    detector = LineartAnimeDetector(files=Files(lineart_anime=tmp_path / "netG.pth"))
    assert_loaded(detector.net, state)
    del state["model.model.3.bias"]
    torch.save(state, tmp_path / "netG.pth")
    with pytest.raises(WeightFileError, match="netG.pth.*model.model.3.bias"):
        LineartAnimeDetector(files=Files(lineart_anime=tmp_path / "netG.pth"))


def test_pidinet_official_file_loads(tmp_path):
    state = random_state("pidinet", seed=13)
    path = tmp_path / "table5_pidinet.pth"
    torch.save({"epoch": 14, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    assert_loaded(PidiNetDetector(files=Files(pidinet=path)).net, state)
    torch.save(state, path)  # unwrapped: refused with the reason
    with pytest.raises(WeightFileError, match="table5_pidinet.pth has no 'state_dict' entry"):
        PidiNetDetector(files=Files(pidinet=path))


# --- network parity with controlnet_aux --------------------------------------------------------------


def network_input(height, width, seed=0):
    return torch.from_numpy(random_image(height, width, seed)).permute(2, 0, 1)[None].float() / 255.0


@torch.inference_mode()
@pytest.mark.parametrize(
    "name, size", [("lineart", (64, 96)), ("lineart_coarse", (32, 32)), ("lineart_anime", (256, 256))]
)
def test_line_networks_match_controlnet_aux(name, size):
    ours, ref = network_pair(name, seed=1)
    x = network_input(*size)
    if name == "lineart_anime":
        x = x * 2.0 - 1.0  # the U-Net takes [-1, 1]
    a, b = ours(x), ref(x)
    assert a.shape == b.shape == (1, 1) + size
    assert 0.05 < float(a.std()), "random weights should give a non-constant map"
    assert relative_error(a, b) <= 1e-5
    list(ours.parameters())[-1].add_(0.01)  # a perturbed output bias is detected (InstanceNorm hides scales)
    assert relative_error(ours(x), b) > 1e-4


@torch.inference_mode()
@pytest.mark.parametrize("size", [(64, 80), (67, 93)])
def test_pidinet_network_matches_controlnet_aux(size):
    ours, ref = network_pair("pidinet", seed=2)
    x = network_input(*size)
    outputs, expected = ours(x), ref(x)
    assert len(outputs) == len(expected) == 5
    for a, b in zip(outputs, expected, strict=True):
        assert a.shape == b.shape == (1, 1) + size
        assert relative_error(a, b) <= 1e-5
    assert 0.01 < float(outputs[-1].std())


def shifted(x, dy, dx):
    """x[r + dy, c + dx] at every interior pixel (a 2-px border is cut off)."""
    h, w = x.shape
    return x[2 + dy : h - 2 + dy, 2 + dx : w - 2 + dx]


@torch.inference_mode()
def test_pixel_difference_ops_by_definition():
    # One-hot 3×3 kernels (flattened tap k) on one channel; expectations written out by hand.
    x = np.random.default_rng(3).standard_normal((9, 10)).astype(np.float32)

    def run(op, tap):
        conv = PixelDifferenceConv2d(op, 1, 1)
        conv.weight.zero_()
        conv.weight.view(-1)[tap] = 1.0
        return conv(torch.from_numpy(x)[None, None])[0, 0].numpy()[2:-2, 2:-2]

    centre = shifted(x, 0, 0)
    assert np.allclose(run("cv", 0), shifted(x, -1, -1), atol=1e-6)
    assert np.allclose(run("cd", 5), shifted(x, 0, 1) - centre, atol=1e-6)  # right neighbour minus centre
    # angular: tap k's weight moves to k and, negated, to the tap whose clockwise neighbour is k
    assert np.allclose(run("ad", 0), shifted(x, -1, -1) - shifted(x, -1, 0), atol=1e-6)
    assert np.allclose(run("ad", 5), shifted(x, 0, 1) - shifted(x, 1, 1), atol=1e-6)
    # radial: tap 1 pairs the outer-ring corner (-2, -2) with the inner-ring (-1, -1): taps are offset by one
    assert np.allclose(run("rd", 1), shifted(x, -2, -2) - shifted(x, -1, -1), atol=1e-6)
    assert np.allclose(run("rd", 8), shifted(x, 2, 2) - shifted(x, 1, 1), atol=1e-6)
    assert np.abs(run("rd", 0)).max() == 0.0  # tap 0 is never used


# --- detector maps vs controlnet_aux --------------------------------------------------------------------


@pytest.mark.parametrize("coarse", [False, True])
def test_lineart_detector_matches_controlnet_aux_inverted(coarse):
    from controlnet_aux.lineart import LineartDetector as AuxLineart

    fine_net, coarse_net = network_pair("lineart", seed=4)[1], network_pair("lineart_coarse", seed=5)[1]
    ours = our_detector(LineartDetector, "lineart_coarse" if coarse else "lineart", 5 if coarse else 4, coarse=coarse)
    img = random_image(64, 128)
    out = ours(img)
    assert out.shape == (64, 128, 3) and out.dtype == np.uint8 and 20 < out.mean() < 235
    reference = run_aux(AuxLineart(fine_net, coarse_net), img, coarse=coarse)
    # controlnet_aux returns 255 - map (white lines on black); the original detector returns dark lines on
    # white and only the lineart apps invert, on the control tensor (1 - map/255).
    assert (out == 255 - reference).all()


def test_lineart_anime_detector_matches_controlnet_aux_inverted():
    from controlnet_aux.lineart_anime import LineartAnimeDetector as AuxAnime

    ours = our_detector(LineartAnimeDetector, "lineart_anime", 6)
    img = random_image(192, 128)  # bicubic up to 256×256 for the network, then back
    assert network_size(192, 128) == (256, 256) and network_size(17, 1000) == (256, 1024)
    out = ours(img)
    assert out.shape == (192, 128, 3) and 20 < out.mean() < 235
    reference = run_aux(AuxAnime(network_pair("lineart_anime", seed=6)[1]), img)
    assert (out == 255 - reference).all()  # same polarity difference as lineart


@pytest.mark.parametrize("safe", [False, True])
def test_pidinet_detector_matches_controlnet_aux(safe):
    from controlnet_aux.pidi import PidiNetDetector as AuxPidi

    ours = our_detector(PidiNetDetector, "pidinet", 7)
    img = random_image(64, 128)
    out = ours(img, safe=safe)
    reference = run_aux(AuxPidi(network_pair("pidinet", seed=7)[1]), img, safe=safe)
    assert out.shape == (64, 128, 3) and (out == reference).all()
    levels = set(np.unique(out).tolist())
    assert levels <= {0, 127, 255} and len(levels) >= 2 if safe else len(levels) > 10


def test_scribble_pidi_matches_controlnet_aux():
    from controlnet_aux.pidi import PidiNetDetector as AuxPidi

    scribble = ScribblePidiDetector(random_init=True)
    scribble.prepare = our_detector(PidiNetDetector, "pidinet", 7)
    img = random_image(64, 128)
    out = scribble(img)
    reference = run_aux(AuxPidi(network_pair("pidinet", seed=7)[1]), img, scribble=True)
    assert set(np.unique(out).tolist()) == {0, 255} and (out == reference).all()


def hed_random_state(seed):
    """HED weights with non-saturated logits (features are on the 0..255 pixel scale)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in uninitialised(ControlNetHED).state_dict().items():
        if key == "norm":
            state[key] = 50 + 100 * torch.rand(value.shape, generator=gen)
        elif value.ndim == 1:
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
            if "projection" in key:
                state[key] /= 30.0
    return state


@pytest.mark.parametrize("safe", [False, True])
def test_softedge_hed_matches_controlnet_aux(safe):
    from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector

    state = hed_random_state(9)
    ours = SoftEdgeHEDDetector(random_init=True)
    ours.net.load_state_dict(state)
    ref_net = uninitialised(ControlNetHED_Apache2)
    ref_net.load_state_dict(state)
    img = random_image(64, 64)
    out = ours(img, safe=safe)
    reference = run_aux(HEDdetector(ref_net), img, safe=safe)
    assert out.shape == (64, 64, 3) and (out == reference).all()
    if safe:
        assert set(np.unique(out).tolist()) == {0, 127, 255}
    else:  # without safe: exactly the 1.0 HED map
        hed = HEDDetector(random_init=True)
        hed.net.load_state_dict(state)
        assert (out == hed(img)).all()


def test_softedge_hed_safe_levels_follow_the_probability():
    ours = SoftEdgeHEDDetector(random_init=True)
    ours.net.load_state_dict(hed_random_state(9))
    img = random_image(48, 64)
    with torch.inference_mode():
        sides = [s[0, 0].numpy() for s in ours.net(torch.from_numpy(img).permute(2, 0, 1)[None].float())]
    p = edge_probability(sides, 48, 64).astype(np.float32)
    expected = np.select([p < 1 / 3, p < 2 / 3], [0, 127], 255)
    near = (np.abs(p - 1 / 3) < 1e-6) | (np.abs(p - 2 / 3) < 1e-6)  # float32 rounding at the steps
    out = ours(img, safe=True)[:, :, 0]
    assert (out == expected)[~near].all() and len(np.unique(expected)) == 3


def test_safe_step_levels():
    x = np.array([0.0, 0.33, 0.3334, 0.6666, 0.6667, 0.99, 1.0])
    y = safe_step(x)
    assert y.dtype == np.float32 and y.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.5]
    assert (y * 255.0).clip(0, 255).astype(np.uint8).tolist() == [0, 0, 127, 127, 255, 255, 255]
    assert safe_step(np.array([0.5, 0.8]), step=4).tolist() == [0.5, 1.0]  # floor(2.5)/4, floor(4.0)/4


# --- odd sizes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, name", [(LineartDetector, "lineart"), (LineartAnimeDetector, "lineart_anime"),
                                       (PidiNetDetector, "pidinet"), (SoftEdgeHEDDetector, "hed")])
@pytest.mark.parametrize("size", [(17, 1000), (301, 18)])
def test_detectors_keep_odd_sizes(cls, name, size):
    detector = cls(random_init=True)
    out = detector(random_image(*size))
    assert out.shape == size + (3,) and out.dtype == np.uint8


def test_lineart_pads_to_a_multiple_of_four():
    detector = our_detector(LineartDetector, "lineart", 4)
    img = random_image(64, 96)
    inside = detector(np.ascontiguousarray(img[:62, :93]))  # padded to 64×96 by reflection, then cropped
    assert inside.shape == (62, 93, 3)
    full = detector(img)
    assert np.abs(inside.astype(int) - full[:62, :93]).mean() < 12  # same lines away from the padded border


# --- shuffle ----------------------------------------------------------------------------------------------


def test_noise_disk_matches_controlnet_aux_and_spans_zero_to_one():
    from controlnet_aux.util import make_noise_disk as aux_noise

    np.random.seed(21)
    expected = aux_noise(40, 70, 3, 16)
    ours = make_noise_disk(40, 70, 3, 16, np.random.RandomState(21))
    assert ours.shape == (40, 70, 3) and (ours == expected).all()
    assert ours.min() == 0.0 and ours.max() == 1.0
    single = make_noise_disk(40, 70, 1, 256, np.random.RandomState(21))
    assert single.shape == (40, 70, 1) and single.min() == 0.0 and single.max() == 1.0


def test_content_shuffle_matches_controlnet_aux_at_one_size():
    from controlnet_aux.shuffle import ContentShuffleDetector as AuxShuffle

    img = random_image(64, 128)
    np.random.seed(5)  # aux draws from numpy's global generator; the original app seeds it with the run's seed
    reference = run_aux(AuxShuffle(), img)
    assert (ContentShuffleDetector()(img, seed=5) == reference).all()


def test_content_shuffle_warps_the_full_resolution_source_to_the_output_size():
    # The 1.1 app samples the *original* image with a flow made at the *output* size (controlnet_aux
    # shuffles the detect-resolution image, then resizes). A ramp source shows the flow: R = column, G = row.
    src_h, src_w = 180, 250
    rows, cols = np.mgrid[0:src_h, 0:src_w]
    source = np.stack([cols, rows, np.zeros_like(rows)], axis=2).astype(np.uint8)
    out = ContentShuffleDetector()(source, seed=12345, size=(64, 96))
    assert out.shape == (64, 96, 3)
    flow = shuffle_flow((64, 96), (src_h, src_w), np.random.RandomState(12345))
    # bilinear sampling of a linear ramp returns the position itself (OpenCV: 1/32-px weights, rounding)
    assert np.abs(out[:, :, 0] - flow[:, :, 0]).max() <= 0.6 and np.abs(out[:, :, 1] - flow[:, :, 1]).max() <= 0.6
    assert (out[:, :, 0].min(), out[:, :, 0].max()) == (0, src_w - 1)  # x spans the whole source width
    assert (out[:, :, 1].min(), out[:, :, 1].max()) == (0, src_h - 1)
    again = ContentShuffleDetector()(source, seed=12345, size=(64, 96))
    assert (again == out).all() and not (ContentShuffleDetector()(source, seed=12346, size=(64, 96)) == out).all()


@pytest.mark.parametrize("size", [(17, 1000), (4096, 64)])
def test_shuffles_keep_odd_sizes(size):
    img = random_image(*size)
    assert ContentShuffleDetector()(img, seed=1).shape == size + (3,)
    assert ColorShuffleDetector()(img, seed=1).shape == size + (3,)


def test_color_shuffle_matches_controlnet_aux_except_the_range_end():
    from controlnet_aux.shuffle import ColorShuffleDetector as AuxColor

    img = random_image(48, 64)
    for seed in range(4):
        assert np.random.RandomState(seed).randint(64, 385) < 384
        np.random.seed(seed)
        reference = AuxColor()(img)
        out = ColorShuffleDetector()(img, seed=seed)
        assert out.dtype == np.uint8 and (out == reference).all()
        assert out.min(axis=(0, 1)).tolist() == [0, 0, 0] and out.max(axis=(0, 1)).tolist() == [255] * 3
    # The cell size is 64..384 inclusive (the original's random.randint); controlnet_aux's
    # np.random.randint(64, 384) excludes 384, so seeds drawing 384 differ from it.
    seed = next(s for s in range(10000) if np.random.RandomState(s).randint(64, 385) == 384)
    np.random.seed(seed)
    assert not (ColorShuffleDetector()(img, seed=seed) == AuxColor()(img)).all()


# --- the apps' own control inputs -------------------------------------------------------------------------


def test_tile_control():
    small = random_image(64, 48)
    hint = tile_control(small, (512, 384))
    assert hint.shape == (512, 384, 3) and (hint == cv2.resize(small, (384, 512), interpolation=cv2.INTER_LINEAR)).all()


def test_inpaint_mask_resizes_and_blurs():
    mask = np.zeros((64, 128), np.uint8)
    mask[16:32, 32:64] = 255
    inside = np.zeros((64, 128), bool)
    inside[16:32, 32:64] = True
    sharp = inpaint_mask(mask, (64, 128), blur=0.1)  # sigma 0.1: the 3-tap kernel is [~0, 1, ~0]
    assert sharp.dtype == np.float32 and sharp.shape == (64, 128)
    assert ((sharp > 0.5) == inside).all() and np.allclose(sharp, inside, atol=1e-6)

    # A mask drawn at half the size (RGBA, channel 0 used) is resized bilinearly as uint8 first:
    # output row r samples source row (r + 0.5)/2 - 0.5, so rows 14..17 over the stroke's top edge
    # (source row 8) get 0, 0.25·255 -> 64, 0.75·255 -> 191, 255.
    half = np.zeros((32, 64, 4), np.uint8)
    half[8:16, 16:32] = 255
    resized = inpaint_mask(half, (64, 128), blur=0.1)
    assert np.allclose(resized[14:18, 48], np.array([0, 64, 191, 255]) / 255.0, atol=1e-6)

    soft = inpaint_mask(mask, (64, 128), blur=5.0)  # a wide blur keeps a soft ramp around the stroke
    assert 0.0 < soft[24, 20] < 0.5 and soft[24, 48] > 0.5 and 0.0 <= soft.min() and soft.max() <= 1.0
    expected = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 5.0)
    assert np.allclose(soft, expected, atol=1e-6)
