"""OpenPose: official key layout and file format, network parity with controlnet_aux on identical
random weights, post-processing on synthetic network outputs, drawing, hands."""

import numpy as np
import pytest
import torch
from torch import nn

from annotator.openpose import OpenposeDetector, Poses
from annotator.openpose.body import estimate_body
from annotator.openpose.draw import COLORS, draw_body, draw_hands
from annotator.openpose.hand import HAND_SCALES, hand_boxes, hand_keypoints, to_image_coordinates
from annotator.openpose.maps import PAD_VALUE, averaged_maps, pad_to_stride
from annotator.openpose.network import BodyPoseNet, HandPoseNet, load_caffe_file
from annotator.util import AnnotatorInputError
from annotator.weights import WeightFileError
from weights.files import WeightsUnavailable
from tests.annotator_nets import assert_official_layout, synthetic_body_maps, uninitialised

NETS = {"body": BodyPoseNet, "hand": HandPoseNet}
FILES = {"body": "body_pose_model.pth", "hand": "hand_pose_model.pth"}


def random_state(name, seed=0):
    """Module-key state dict; variance-preserving kernels so 40-odd layers keep O(1) activations."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in uninitialised(NETS[name]).state_dict().items():
        if key.endswith(".bias"):
            state[key] = 0.05 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
    return state


def caffe_names(state):
    return {key.split(".", 1)[1]: value for key, value in state.items()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random weights per network and a directory holding them as the official flat-name files."""
    folder = tmp_path_factory.mktemp("openpose")
    states = {name: random_state(name, seed) for seed, name in enumerate(NETS)}
    for name, state in states.items():
        torch.save(caffe_names(state), folder / FILES[name])
    return states, folder


def rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("name", list(NETS))
def test_key_layout_matches_official(name):
    state = uninitialised(NETS[name]).state_dict()
    assert_official_layout(state, f"annotator_keys_openpose_{name}.json")
    assert_official_layout(caffe_names(state), f"annotator_keys_openpose_{name}.json", "file_keys")


@pytest.mark.parametrize("name", list(NETS))
def test_official_file_loads(weights, name):
    states, folder = weights
    net = load_caffe_file(uninitialised(NETS[name]), folder / FILES[name])
    assert all(torch.equal(v, states[name][k]) for k, v in net.state_dict().items())


def test_bad_files_are_named(weights, tmp_path):
    states, _ = weights
    module_keys = {k: v for k, v in list(states["hand"].items())[:4]}  # module keys, not Caffe names
    torch.save(module_keys, tmp_path / "module_keys.pth")
    with pytest.raises(WeightFileError, match="module_keys.pth.*missing"):
        load_caffe_file(uninitialised(HandPoseNet), tmp_path / "module_keys.pth")
    flat = caffe_names(states["hand"])
    flat["conv1_1.weight"] = flat["conv1_1.weight"][:, :2]
    torch.save(flat, tmp_path / "bad_shape.pth")
    with pytest.raises(WeightFileError, match="(?s)bad_shape.pth.*conv1_1"):
        load_caffe_file(uninitialised(HandPoseNet), tmp_path / "bad_shape.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightFileError, match="garbage.pth"):
        load_caffe_file(uninitialised(HandPoseNet), tmp_path / "garbage.pth")


def test_networks_match_controlnet_aux(weights):
    from controlnet_aux.open_pose import util as aux_util
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    states, _ = weights
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(1)) - 0.5
    errors = {}
    for name, make_ref in (("body", bodypose_model), ("hand", handpose_model)):
        ours, ref = uninitialised(NETS[name]), uninitialised(make_ref)
        ours.load_state_dict(states[name])
        ref.load_state_dict(aux_util.transfer(ref, caffe_names(states[name])))
        with torch.no_grad():
            out, expected = ours(x), ref(x)
        out, expected = (out, expected) if name == "body" else ((out,), (expected,))
        for i, (a, b) in enumerate(zip(out, expected)):
            assert a.shape == b.shape and b.abs().max() > 1e-3
            errors[f"{name}{i}"] = rel_err(a, b)
    print("openpose raw output max relative errors:", errors)
    assert max(errors.values()) <= 1e-4


def test_final_heatmaps_are_relu_clamped_and_pafs_are_not(weights):
    states, _ = weights
    net = uninitialised(BodyPoseNet)
    net.load_state_dict(states["body"])
    with torch.no_grad():
        pafs, heatmaps = net(torch.rand(1, 3, 32, 32) - 0.5)
    assert heatmaps.min() >= 0 and heatmaps.max() > 0 and pafs.min() < 0


# --- synthetic network outputs: two people, every keypoint and limb field placed by hand ----------

GRID = (23, 36)  # network output for a 184×288 image (one pass at scale 0.5 · 368 / 184 = 1)
PERSON = (  # COCO-18 keypoints on the 1/8 grid (x, y)
    (9, 3), (9, 6), (6, 6), (4, 9), (3, 12), (12, 6), (14, 9), (15, 12), (7, 13),
    (7, 17), (7, 21), (11, 13), (11, 17), (11, 21), (8, 1), (10, 1), (6, 2), (12, 2),
)
PEOPLE = (PERSON, tuple((x + 18, y) for x, y in PERSON))


def synthetic_outputs():
    return synthetic_body_maps(PEOPLE, GRID)


class FixedOutputs(nn.Module):
    """Stands in for the body network: returns the synthetic (PAFs, heatmaps) whatever the input."""

    def __init__(self, paf, heat):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.out = torch.from_numpy(paf)[None], torch.from_numpy(heat)[None]

    def forward(self, x):
        return self.out


def test_body_postprocessing_matches_controlnet_aux():
    """Same full-resolution maps in -> same peaks (candidate) and people (subset) as the original code."""
    from controlnet_aux.open_pose import util as aux_util
    from controlnet_aux.open_pose.body import Body

    paf, heat = synthetic_outputs()
    reference = Body.__new__(Body)  # the original post-processing around a fixed-output network
    reference.model = FixedOutputs(paf, heat)
    image = np.zeros((184, 288, 3), np.uint8)
    expected_candidate, expected_subset = reference(image)

    def full_res(maps):  # the upsampling controlnet_aux uses (its resize differs from 1.0's cubic)
        up = aux_util.smart_resize_k(maps.transpose(1, 2, 0), fx=8, fy=8)
        return aux_util.smart_resize(up, image.shape[:2]).astype(np.float64)

    candidate, subset = estimate_body(full_res(heat), full_res(paf))
    assert len(subset) == 2 and (subset[:, 19] == 18).all()
    np.testing.assert_array_equal(candidate, expected_candidate)
    np.testing.assert_array_equal(subset, expected_subset)


def test_body_pipeline_on_synthetic_outputs_finds_both_people():
    """1.0's own path (cubic ×8, crop, resize) on the synthetic outputs: keypoints where placed."""
    paf, heat = synthetic_outputs()
    seen = []

    def run(x):
        seen.append(tuple(x.shape))
        return np.concatenate([paf, heat])[None]

    maps = averaged_maps(run, np.zeros((184, 288, 3), np.uint8), (0.5,))
    assert seen == [(1, 3, 184, 288)] and maps.shape == (184, 288, 57) and maps.dtype == np.float64
    candidate, subset = estimate_body(maps[:, :, 38:], maps[:, :, :38])
    assert len(subset) == 2 and (subset[:, 19] == 18).all()
    for person in subset:
        found = candidate[person[:18].astype(int), :2]
        placed = np.array(PEOPLE[0] if found[0, 0] < 144 else PEOPLE[1]) * 8 + 3.5
        assert np.abs(found - placed).max() <= 1.5


def test_network_input_is_scaled_padded_and_normalised():
    seen = []

    def run(x):
        seen.append(x)
        return np.zeros((1, 22, x.shape[2] // 8, x.shape[3] // 8), np.float32)

    bgr = np.full((50, 30, 3), (0, 128, 255), np.uint8)
    maps = averaged_maps(run, bgr, HAND_SCALES)
    assert maps.shape == (50, 30, 22)
    heights = [x.shape[2] for x in seen]
    assert heights == [184, 368, 552, 736]  # s · 368 rows, already multiples of 8
    x = seen[0][0]
    assert x.shape[2] == 112  # 30 · 184 / 50 = 110.4 -> 110 columns, padded to 112 with 128
    assert torch.allclose(x[:, 5, 5], torch.tensor([-0.5, 0.0, 255 / 256 - 0.5]))
    assert (x[:, :, 110:] == PAD_VALUE / 256 - 0.5).all()
    padded, pads = pad_to_stride(np.zeros((9, 17, 3), np.uint8))
    assert padded.shape == (16, 24, 3) and pads == (7, 7) and (padded[9:] == PAD_VALUE).all()


def test_extreme_aspect_ratio_is_refused_before_the_network():
    with pytest.raises(AnnotatorInputError, match="aspect ratio"):
        averaged_maps(lambda x: pytest.fail("network ran"), np.zeros((8, 4096, 3), np.uint8), (0.5,))


# --- drawing ------------------------------------------------------------------------------------


def test_draw_body_colours_and_blending():
    candidate = np.array([[50, 20, 0.9, 0], [50, 60, 0.9, 1]], np.float64)
    person = np.full(20, -1.0)
    person[0], person[1], person[18], person[19] = 0, 1, 2.0, 2
    canvas = draw_body(np.zeros((80, 100, 3), np.uint8), candidate, person[None])
    assert tuple(canvas[17, 50]) == (255, 0, 0)  # nose disc, beyond the limb's end: pure red
    assert tuple(canvas[40, 50]) == (0, 0, 153)  # limb 12 (neck-nose) colour at 0.6 over black
    assert tuple(canvas[57, 50]) == tuple(round(0.4 * c + 0.6 * d) for c, d in zip(COLORS[1], COLORS[12]))
    assert tuple(canvas[40, 56]) == (0, 0, 0)  # ellipse half-width is 4
    assert COLORS[0] == (255, 0, 0) and len(COLORS) == 18


def test_draw_hands():
    points = np.array([[20, 60], [20, 30]] + [[60 + 8 * k, 10 + 2 * k] for k in range(2, 21)])
    points[20] = 0  # missing
    canvas = draw_hands(np.zeros((80, 240, 3), np.uint8), [points])
    assert tuple(canvas[45, 20]) == (255, 0, 0)  # edge 0 (hue 0) between keypoints 0 and 1
    assert tuple(canvas[60, 20]) == (0, 0, 255)  # keypoint dot
    assert not canvas[:6, :6].any()  # no dot drawn for the missing keypoint


# --- hands --------------------------------------------------------------------------------------


def arm_pose():
    candidate = np.array([
        [40, 30, 1, 0], [60, 30, 1, 1], [60, 80, 1, 2],  # r shoulder, elbow, wrist
        [100, 30, 1, 3], [110, 55, 1, 4], [118, 70, 1, 5],  # l shoulder, elbow, wrist
    ], np.float64)
    person = np.full(20, -1.0)
    person[[2, 3, 4]] = 0, 1, 2
    person[[5, 6, 7]] = 3, 4, 5
    person[18], person[19] = 6.0, 6
    return candidate, person[None]


def test_hand_boxes_match_controlnet_aux():
    from controlnet_aux.open_pose import util as aux_util
    from controlnet_aux.open_pose.body import Body

    candidate, subset = arm_pose()
    image = np.zeros((100, 140, 3), np.uint8)
    boxes = hand_boxes(candidate, subset, *image.shape[:2])
    (body,) = Body.format_body_result(candidate, subset)
    assert boxes == [tuple(b) for b in aux_util.handDetect(body, image)]
    # by hand: left side 1.5 · max(17, 0.9 · 26.93) = 36.35 around (120.64, 74.95); right side
    # 1.5 · 50 = 75 around (60, 96.5), clipped at the bottom edge to 100 - 59 = 41
    assert boxes == [(102, 56, 36, True), (22, 59, 41, False)]


def test_hand_keypoints_keep_the_heaviest_component():
    heat = np.zeros((60, 60, 22))
    ys, xs = np.mgrid[:60, :60]
    heat[:, :, 0] = 0.5 * np.exp(-((xs - 15) ** 2 + (ys - 40) ** 2) / 50)  # broad blob, most mass
    heat[10, 45, 0] = 0.9  # higher but isolated spike
    heat[:, :, 0] += 0.8 * np.exp(-((xs - 45) ** 2 + (ys - 10) ** 2) / 2)
    heat[:, :, 1] = 0.01  # never above threshold
    points = hand_keypoints(heat)
    assert tuple(points[0]) == (15, 40) and tuple(points[1]) == (0, 0)
    placed = to_image_coordinates(np.array([[3, 0], [0, 0], [2, 5]]), 100, 200)
    assert placed.tolist() == [[103, 0], [0, 0], [102, 205]]


# --- the detector -------------------------------------------------------------------------------


def test_detector_loads_official_files_and_returns_rgb_map(weights, monkeypatch):
    states, folder = weights
    monkeypatch.setenv("ANNOTATOR_CKPTS", str(folder))
    det = OpenposeDetector()
    assert torch.equal(det.body_net.state_dict()["model6_2.Mconv7_stage6_L2.bias"], states["body"]["model6_2.Mconv7_stage6_L2.bias"])
    image = np.random.default_rng(0).integers(0, 256, (96, 48, 3), dtype=np.uint8)
    canvas, poses = det.detect(image, hand=True)
    assert canvas.shape == image.shape and canvas.dtype == np.uint8 and isinstance(poses, Poses)
    assert poses.subset.shape[1] == 20 and poses.candidate.shape[1] == 4
    assert np.array_equal(det(image), draw_body(np.zeros_like(image), poses.candidate, poses.subset))


class CentreBlob(nn.Module):
    """Stands in for the hand network: keypoint 0 at the centre of whatever crop it sees."""

    def forward(self, x):
        out = torch.zeros(1, 22, x.shape[2] // 8, x.shape[3] // 8)
        ys, xs = torch.meshgrid(*((torch.arange(n) + 0.5) / n - 0.5 for n in out.shape[2:]), indexing="ij")
        out[0, 0] = (1 - 4 * torch.hypot(ys, xs)).clamp(min=0)  # a cone at the crop centre
        return out


def test_detector_with_hands_on_synthetic_outputs():
    paf, heat = synthetic_outputs()
    det = OpenposeDetector.from_networks(FixedOutputs(paf, heat), CentreBlob())
    image = np.zeros((184, 288, 3), np.uint8)
    canvas, poses = det.detect(image, hand=True)
    boxes = hand_boxes(poses.candidate, poses.subset, 184, 288)
    assert len(poses.subset) == 2 and len(boxes) == len(poses.hands) == 4
    for (x, y, side, _), points in zip(boxes, poses.hands):
        assert np.abs(points[0] - (x + side / 2, y + side / 2)).max() <= 6  # crop centre, image coordinates
        assert (points[1:] == 0).all()
        assert tuple(canvas[points[0][1], points[0][0]]) == (0, 0, 255)
    assert np.array_equal(det(image), draw_body(np.zeros_like(image), poses.candidate, poses.subset))


def test_missing_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATOR_CKPTS", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="body_pose_model.pth"):
        OpenposeDetector()
