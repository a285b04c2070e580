"""ControlNet 1.1 annotators: Normal BAE and OpenPose 1.1 (face network, smart_resize, rewritten hand
estimator, face boxes, 1.1 drawing). Official key layouts and file formats, parity with controlnet_aux on
identical random weights, and the original's behaviour where controlnet_aux departs from it."""
import math
import types

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from annotator.normalbae import NormalBaeDetector, predict_normals
from annotator.normalbae.efficientnet import same_padding
from annotator.normalbae.network import NormalBaeNet, load_scannet
from annotator.openpose.detector_v11 import MODES, OpenposeV11Detector, normalized
from annotator.openpose.draw import COLORS
from annotator.openpose.draw_v11 import draw_pose
from annotator.openpose.face import FaceNet, face_boxes, face_heatmaps, face_keypoints
from annotator.openpose.hand_v11 import hand_points
from annotator.openpose.maps_v11 import body_input_size, hand_maps
from annotator.openpose.network import BodyPoseNet, HandPoseNet
from annotator.openpose.smart_resize import smart_resize, smart_resize_k
from annotator.weights import WeightFileError, build_network, load_into
from tests.annotator_nets import assert_official_layout, synthetic_body_maps, uninitialised


class Files:
    """Weight-key -> path resolver handed to the detectors (`files=`), as build_network expects."""

    def __init__(self, **paths):
        self.paths = paths

    def resolve(self, key):
        return self.paths[key]


def rel_err(ours, ref):
    ours, ref = torch.as_tensor(ours), torch.as_tensor(ref)
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def random_state(make, seed, batch_norms=()):
    """Module-key random weights keeping activations O(1): variance-preserving kernels, small biases,
    BatchNorm affine near identity and running statistics that are not the identity."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in uninitialised(make).state_dict().items():
        module, name = key.rsplit(".", 1)
        if name == "num_batches_tracked":
            state[key] = torch.tensor(7)
        elif module in batch_norms and name == "running_var":
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif module in batch_norms and name == "weight":
            state[key] = 1 + 0.1 * torch.randn(value.shape, generator=gen)
        elif module in batch_norms or value.ndim == 1:  # running_mean, BN bias, conv bias
            state[key] = 0.05 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = torch.randn(value.shape, generator=gen) * (1.0 / value[0].numel()) ** 0.5
    return state


# === Normal BAE ======================================================================================


def batch_norm_names(make):
    return {name for name, m in uninitialised(make).named_modules() if isinstance(m, nn.BatchNorm2d)}


class NotATensor:
    """Anything but tensors: a weights_only reader must refuse to unpickle it."""


@pytest.fixture(scope="module")
def scannet(tmp_path_factory):
    """Random weights saved as the official scannet.pt: under "model", keys prefixed with "module."."""
    state = random_state(NormalBaeNet, 0, batch_norm_names(NormalBaeNet))
    path = tmp_path_factory.mktemp("normalbae") / "scannet.pt"
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, path)
    return state, path


def test_normalbae_key_layout_matches_official():
    assert_official_layout(uninitialised(NormalBaeNet).state_dict(), "annotator_keys_normalbae.json")


def test_normalbae_file_loads_strictly_and_bad_files_are_named(scannet, tmp_path):
    state, path = scannet
    net = load_scannet(uninitialised(NormalBaeNet), path)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    plain = tmp_path / "plain.pt"  # keys without the DDP prefix load as well
    torch.save({"model": state}, plain)
    assert torch.equal(load_scannet(uninitialised(NormalBaeNet), plain).state_dict()["decoder.conv2.bias"], state["decoder.conv2.bias"])
    some = {k: v for k, v in state.items() if k.startswith("decoder.up4")}
    torch.save(some, tmp_path / "unwrapped.pt")
    with pytest.raises(WeightFileError, match="unwrapped.pt.*'model'"):
        load_scannet(uninitialised(NormalBaeNet), tmp_path / "unwrapped.pt")
    torch.save({"model": some}, tmp_path / "partial.pt")
    with pytest.raises(WeightFileError, match="partial.pt.*missing"):
        load_scannet(uninitialised(NormalBaeNet), tmp_path / "partial.pt")
    torch.save({"model": {"x": NotATensor()}}, tmp_path / "pickle.pt")
    with pytest.raises(WeightFileError, match="pickle.pt"):  # weights_only refuses arbitrary objects
        load_scannet(uninitialised(NormalBaeNet), tmp_path / "pickle.pt")


@pytest.fixture(scope="module")
def aux_nnet(scannet):
    """controlnet_aux's NNET (the original network code) with the same file read by its own loader."""
    from controlnet_aux.normalbae import load_checkpoint
    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                 sampling_ratio=0.4, importance_ratio=0.7)
    with torch.device("meta"):
        model = NNET(args)
    return load_checkpoint(str(scannet[1]), model.to_empty(device="cpu")).eval()


def test_normalbae_network_matches_controlnet_aux(scannet, aux_nnet):
    ours = load_scannet(uninitialised(NormalBaeNet), scannet[1])
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, expected = ours(x), aux_nnet(x)[0]
        errors = [rel_err(a, b) for a, b in zip(out, expected)]
        print("Normal BAE outputs (1/8, 1/4, 1/2, 1/1) max relative error:", errors)
        assert [tuple(o.shape) for o in out] == [(1, 4, 16, 20), (1, 4, 32, 40), (1, 4, 64, 80), (1, 4, 128, 160)]
        assert max(errors) <= 1e-5 and expected[-1][:, :3].std() > 0.1
        # the match depends on the TF BatchNorm eps (1e-3), not the PyTorch default
        ours.encoder.original_model.bn1.eps = 1e-5
        assert rel_err(ours(x)[-1], expected[-1]) > 1e-4


def test_same_padding_is_asymmetric_for_stride_two():
    assert same_padding(128, 3, 2) == (0, 1) and same_padding(17, 3, 2) == (1, 1)
    assert same_padding(64, 5, 2) == (1, 2) and same_padding(15, 5, 2) == (2, 2)


def test_normalbae_detector_matches_controlnet_aux(scannet, aux_nnet):
    """At a size where aux's own resizing is the identity (128×192, detect = image resolution 128), its
    detector and ours give the same map."""
    from controlnet_aux.normalbae import NormalBaeDetector as AuxNormalBaeDetector

    image = cv2.GaussianBlur(np.random.default_rng(2).integers(0, 256, (128, 192, 3), dtype=np.uint8), (0, 0), 2)
    ours = NormalBaeDetector(files=Files(normalbae=scannet[1]))
    expected = AuxNormalBaeDetector(aux_nnet)(image, detect_resolution=128, image_resolution=128, output_type="np")
    out = ours(image)
    assert out.shape == (128, 192, 3) and out.dtype == np.uint8 and out.std() > 10
    assert np.array_equal(out, expected)


class EchoNet(nn.Module):
    """Stands in for NormalBaeNet: the full-resolution 'prediction' is the input itself (+ its red channel)."""

    def forward(self, x):
        self.seen = x
        return [torch.cat([x, x[:, :1]], 1)]


def test_normalbae_input_is_normalised_and_padded_to_multiples_of_8():
    image = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    net = EchoNet()
    out = predict_normals(net, image)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (torch.from_numpy(image).float().permute(2, 0, 1) / 255.0 - mean[:, None, None]) / std[:, None, None]
    assert net.seen.shape == (1, 3, 40, 56)
    assert torch.equal(net.seen[0, :, :37, :53], expected) and torch.equal(out[:3], expected)
    assert torch.equal(net.seen[0, :, 37:, :53], expected[:, 36:37].expand(3, 3, 53))  # edge rows repeated
    assert torch.equal(net.seen[0, :, :37, 53:], expected[:, :, 52:53].expand(3, 37, 3))
    assert out.shape == (4, 37, 53)


class ConstantNormals(nn.Module):
    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values, dtype=torch.float32)

    def forward(self, x):
        n, _, h, w = x.shape
        return [self.values.view(1, 4, 1, 1).expand(n, 4, h, w)]


@pytest.mark.parametrize("normal, colour", [
    ((-1.0, 0.0, 1.0), (0, 127, 255)),  # (n + 1) / 2 · 255, truncated: 127.5 -> 127
    ((0.6, 0.0, 0.0), (204, 127, 127)),  # not re-normalised to unit length (that would give 255)
    ((1.5, -1.2, -0.2), (255, 0, 102)),  # clipped to [0, 1] before ×255
])
def test_normalbae_map_is_the_prediction_mapped_to_rgb(normal, colour):
    detector = NormalBaeDetector.__new__(NormalBaeDetector)
    detector.device, detector.net = "cpu", ConstantNormals(normal + (5.0,))
    out = detector(np.zeros((16, 24, 3), np.uint8))
    assert out.shape == (16, 24, 3) and (out == colour).all()


def test_normalbae_detector_keeps_odd_sizes():
    detector = NormalBaeDetector(random_init=True)
    for shape in ((17, 1000, 3), (4096, 64, 3)):
        image = np.random.default_rng(4).integers(0, 256, shape, dtype=np.uint8)
        out = detector(image)
        assert out.shape == shape and out.dtype == np.uint8


# === OpenPose 1.1: face network ======================================================================


@pytest.fixture(scope="module")
def facenet_file(tmp_path_factory):
    """Random weights saved as the official facenet.pth: a plain dict, file keys = module keys."""
    state = random_state(FaceNet, 1)
    state = {k: v * 2 ** 0.5 if v.ndim > 1 else v for k, v in state.items()}  # He scaling for the ReLU stack
    path = tmp_path_factory.mktemp("face") / "facenet.pth"
    torch.save(state, path)
    return state, path


def test_face_key_layout_matches_official():
    assert_official_layout(uninitialised(FaceNet).state_dict(), "annotator_keys_openpose_face.json")


def test_facenet_file_loads_and_matches_controlnet_aux(facenet_file):
    from controlnet_aux.open_pose.face import Face

    state, path = facenet_file
    ours = build_network(FaceNet, "openpose_face", "cpu", False, files=Files(openpose_face=path))
    assert all(torch.equal(v, state[k]) for k, v in ours.state_dict().items())
    reference = Face(str(path)).model  # aux's own strict load of the same file
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(5)) - 0.5
    with torch.no_grad():
        out, expected = ours(x), reference(x)[-1]
    error = rel_err(out, expected)
    print(f"FaceNet last-stage heatmaps max relative error: {error:.3g}")
    assert out.shape == (1, 71, 8, 6) and expected.abs().max() > 1e-2 and error <= 1e-5
    module_keys = {"model." + k: v for k, v in state.items()}
    torch.save(module_keys, path.parent / "prefixed.pth")
    with pytest.raises(WeightFileError, match="prefixed.pth.*missing"):
        load_into(uninitialised(FaceNet), path.parent / "prefixed.pth")


# === OpenPose 1.1: resizing, body pass, hands, faces =================================================


@pytest.mark.parametrize("shape, size", [
    ((40, 30, 3), (184, 184)), ((40, 30, 3), (7, 9)), ((23, 36, 22), (184.0, 288.0)),
    ((60, 50, 22), (17, 13)), ((60, 50), (128, 128)), ((9, 11, 1), (30, 30)),
])
def test_smart_resize_matches_controlnet_aux(shape, size):
    from controlnet_aux.open_pose import util as aux_util

    rng = np.random.default_rng(6)
    for x in (rng.integers(0, 256, shape, dtype=np.uint8), rng.standard_normal(shape).astype(np.float32)):
        out = smart_resize(x, size)
        assert out.shape[:2] == (int(size[0]), int(size[1]))
        assert np.array_equal(out, aux_util.smart_resize(x, size))
        assert np.array_equal(smart_resize_k(x, 2.5, 0.4), aux_util.smart_resize_k(x, 2.5, 0.4))
    grow = np.zeros((4, 4), np.float32)
    grow[1, 1] = 1
    assert smart_resize(grow, (8, 8)).min() < 0  # enlarging: Lanczos-4 (rings), shrinking: area
    assert np.array_equal(smart_resize(np.kron(np.eye(2, dtype=np.float32), np.ones((2, 2), np.float32)), (2, 2)), np.eye(2))


GRID = (23, 36)  # body network output for a 184×288 network input
PERSON = (  # COCO-18 keypoints on the 1/8 grid (x, y)
    (9, 3), (9, 6), (6, 6), (4, 9), (3, 12), (12, 6), (14, 9), (15, 12), (7, 13),
    (7, 17), (7, 21), (11, 13), (11, 17), (11, 21), (8, 1), (10, 1), (6, 2), (12, 2),
)


def synthetic_outputs(people):
    """(PAFs (38, 23, 36), heatmaps (19, 23, 36)) for `people`."""
    return synthetic_body_maps(people, GRID)


class FixedBody(nn.Module):
    """Stands in for the body network: records its input and returns fixed (PAFs, heatmaps)."""

    def __init__(self, paf, heat):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # aux reads the device from the first parameter
        self.out = torch.from_numpy(paf)[None], torch.from_numpy(heat)[None]
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.out


class ToyHeatmaps(nn.Module):
    """A cheap stand-in for the hand / face networks (same strides, same channel count): 8×8 average
    pooling, a random 3×3 conv, some channels pushed below every threshold."""

    def __init__(self, channels, seed, as_list=False):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen))
            self.conv.bias.copy_(0.3 * torch.randn(channels, generator=gen))
            self.conv.bias[::5] = -10.0
        self.as_list = as_list

    def forward(self, x):
        out = self.conv(nn.functional.avg_pool2d(x, 8))
        return [out] if self.as_list else out


def test_body_pass_uses_smart_resize_like_controlnet_aux():
    """Same image in -> same network input (area-shrunk to 0.5 · 368 / H) and same people out."""
    from controlnet_aux.open_pose.body import Body

    paf, heat = synthetic_outputs([PERSON, tuple((x + 18, y) for x, y in PERSON)])
    image = cv2.GaussianBlur(np.random.default_rng(7).integers(0, 256, (368, 576, 3), dtype=np.uint8), (0, 0), 3)
    ours = OpenposeV11Detector.from_networks(FixedBody(paf, heat))
    pose = ours.detect(image)
    reference = Body.__new__(Body)
    reference.model = FixedBody(paf, heat)
    candidate, subset = reference(np.ascontiguousarray(image[:, :, ::-1]))
    assert len(ours.body_net.seen) == 1 and ours.body_net.seen[0].shape == (1, 3, 184, 288)
    assert torch.equal(ours.body_net.seen[0], reference.model.seen[0])
    assert np.array_equal(pose.subset, subset) and len(subset) == 2
    assert np.array_equal(pose.candidate, candidate[:, :2] / (576.0, 368.0))


def test_body_input_size_rule():
    assert body_input_size(512, 512) == (184.0, 184.0)
    assert body_input_size(512, 768) == (184.0, 276.0)
    assert body_input_size(4096, 16) == (184.0, 1.0)  # 0.72 px would be 0: at least one pixel
    height, width = body_input_size(17, 1000)  # 184 × 10824 would not fit: longest side capped at 2048
    assert width == 2048 and int(height) == 34


def test_hand_estimator_matches_controlnet_aux():
    from controlnet_aux.open_pose.hand import Hand

    net = ToyHeatmaps(22, seed=8)
    crop = cv2.GaussianBlur(np.random.default_rng(9).integers(0, 256, (61, 61, 3), dtype=np.uint8), (0, 0), 2)
    reference = Hand.__new__(Hand)
    reference.model = net
    expected = reference(crop)
    seen = []

    def run(x):
        seen.append(tuple(x.shape))
        with torch.no_grad():
            return net(x).numpy()

    points = hand_points(run, crop)
    assert seen == [(1, 3, 184, 184), (1, 3, 368, 368), (1, 3, 552, 552), (1, 3, 736, 736)]
    assert np.array_equal(points, expected)
    assert (points[::5] == 0).all() and (points[1:5] > 0).all()  # silenced channels -> (0, 0)
    assert hand_maps(run, crop).shape == (128, 128, 22)


def test_face_estimator_matches_controlnet_aux():
    from controlnet_aux.open_pose.face import Face

    reference = Face.__new__(Face)
    reference.model = ToyHeatmaps(71, seed=10, as_list=True)
    net = ToyHeatmaps(71, seed=10)
    crop = cv2.GaussianBlur(np.random.default_rng(11).integers(0, 256, (52, 40, 3), dtype=np.uint8), (0, 0), 2)
    heatmaps = face_heatmaps(net, crop)
    expected = reference(crop)
    assert heatmaps.shape == (71, 52, 40) and np.array_equal(heatmaps, expected)
    points = face_keypoints(heatmaps)
    assert np.array_equal(points, reference.compute_peaks_from_heatmaps(expected))
    assert 0 < len(points) < 71  # channels without a value above 0.05 are dropped, the list compacted


def test_face_keypoints_take_each_channel_argmax():
    maps = np.zeros((3, 10, 12), np.float32)
    maps[0, 2, 7], maps[0, 8, 1] = 0.3, 0.2  # the global maximum wins
    maps[1, 5, 5] = 0.05  # not above the threshold: dropped
    maps[2, 9, 11] = 0.06
    assert face_keypoints(maps).tolist() == [[7, 2], [11, 9]]
    assert face_keypoints(maps[1:2]).shape == (0, 2)
    background_only = np.zeros((71, 10, 12), np.float32)
    background_only[70, 4, 3] = 0.9  # the 71st map is the face model's background: searched all the same
    assert face_keypoints(background_only).tolist() == [[3, 4]]


def body_rows(people):
    """candidate (x, y, score, id) and subset rows for people given as {part: (x, y)}."""
    candidate, subset = [], []
    for person in people:
        row = np.full(20, -1.0)
        for part, (x, y) in person.items():
            row[part] = len(candidate)
            candidate.append((x, y, 1.0, len(candidate)))
        row[18], row[19] = len(person), len(person)
        subset.append(row)
    return np.array(candidate, np.float64).reshape(-1, 4), np.array(subset).reshape(-1, 20)


def test_face_boxes_match_controlnet_aux_and_keep_the_border_quirk():
    from controlnet_aux.open_pose import util as aux_util
    from controlnet_aux.open_pose.body import Body

    people = [
        {0: (50, 40), 14: (45, 35)},  # eye at Chebyshev distance 5 -> half-size 15
        {0: (150, 60), 16: (162, 58), 17: (141, 61)},  # ears only: 1.5 × 12 = 18
        {14: (30, 90), 15: (40, 90)},  # no nose: no box
        {0: (195.5, 20), 15: (185, 12)},  # half-size 31.5: x + 31.5 = 195.5 < 200, so not trimmed
        {0: (100, 100), 15: (102, 99)},  # side 12 < 20: dropped
        {0: (5, 10), 14: (1, 10), 16: (40, 3)},  # half-size 52.5, clipped at the top and left
        {0: (10, 10), 17: (150, 10)},  # half-size 210 > W: only now are the right and bottom trimmed
    ]
    candidate, subset = body_rows(people)
    image = np.zeros((120, 200, 3), np.uint8)
    boxes = face_boxes(candidate, subset, 120, 200)
    expected = [aux_util.faceDetect(body, image) for body in Body.format_body_result(candidate, subset)]
    assert boxes == [tuple(b) for b in expected if b is not None]
    # by hand: (50 - 15, 40 - 15, 30); (150 - 18, 60 - 18, 36); (195.5 - 31.5, 0, 63), whose crop
    # image[0:63, 164:227] is only 36 px wide; (0, 0, 105): 0 + 52.5 is inside both sides, so no
    # trimming; (0, 0, min(200 - 0, 120 - 0)) since 0 + 210 exceeds both
    assert boxes == [(35, 25, 30), (132, 42, 36), (164, 0, 63), (0, 0, 105), (0, 0, 120)]
    assert image[0:63, 164:227].shape[:2] == (63, 36)


def test_hand_and_face_points_are_normalised_in_float32():
    points = np.array([[0, 5], [3, 0], [10, 12]])
    out = normalized(points, 20, 30, 200, 100)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[-1 / 200, 35 / 100], [23 / 200, -1 / 100], [30 / 200, 42 / 100]], np.float32))


# === OpenPose 1.1: drawing ===========================================================================


def keypoints_for_aux(points):
    """Our float32 rows as aux Keypoints, via Python floats as the original's tolist() gives them."""
    from controlnet_aux.open_pose.body import Keypoint

    return [Keypoint(float(x), float(y)) for x, y in np.asarray(points).tolist()]


def aux_poses(candidate, subset, hands, faces, width, height):
    """controlnet_aux PoseResults from our arrays (normalised candidate (n, 2), one hand pair and one face per person)."""
    from controlnet_aux.open_pose import PoseResult
    from controlnet_aux.open_pose.body import BodyResult, Keypoint

    poses = []
    for n, person in enumerate(subset):
        keypoints = [Keypoint(*candidate[int(i)]) if i != -1 else None for i in person[:18]]
        left, right = (keypoints_for_aux(h) for h in hands[2 * n: 2 * n + 2]) if hands else (None, None)
        face = keypoints_for_aux(faces[n]) if faces else None
        poses.append(PoseResult(BodyResult(keypoints, person[18], person[19]), left, right, face))
    return poses


def pixel_person(offset=(0.0, 0.0), scale=8.0):
    return {part: ((x + offset[0]) * scale + 3.5, (y + offset[1]) * scale + 3.5) for part, (x, y) in enumerate(PERSON)}


def synthetic_hand(cx, cy, missing=()):
    points = np.array([[cx + 6 * math.cos(k / 3), cy + 3 * k * math.sin(k / 5)] for k in range(21)], np.float32)
    points[list(missing)] = -1
    return points


def test_draw_pose_matches_controlnet_aux_for_one_person():
    height, width = 184, 160
    candidate, subset = body_rows([pixel_person()])
    candidate = candidate[:, :2] / (float(width), float(height))
    hands = [synthetic_hand(30, 120, missing=(3,)) / (width, height), synthetic_hand(120, 110) / (width, height)]
    hands[0][7] = (0.5 / width, 0.3)  # x truncates to 0 px: not drawn
    faces = [np.array([[70 + 3 * (k % 5), 10 + 4 * (k // 5)] for k in range(14)], np.float32) / (width, height)]
    hands, faces = [h.astype(np.float32) for h in hands], [f.astype(np.float32) for f in faces]
    from controlnet_aux.open_pose import draw_poses

    poses = aux_poses(candidate, subset, hands, faces, width, height)
    no_hands = draw_pose(candidate, subset, [], faces, height, width)
    assert np.array_equal(no_hands, draw_poses(poses, height, width, draw_hand=False))
    assert np.count_nonzero(no_hands.any(axis=2)) > 2000
    pytest.importorskip("matplotlib", reason="controlnet_aux draws hands with matplotlib's HSV colours")
    ours = draw_pose(candidate, subset, hands, faces, height, width)
    assert np.count_nonzero(ours != no_hands) > 100
    assert np.array_equal(ours, draw_poses(poses, height, width))


def test_draw_bodies_limbs_opaque_then_darkened_then_joints():
    """Hand-computed pixels of the 1.1 rule (1.0 drew the joints first and blended each limb at 0.6)."""
    height, width = 100, 120
    # neck; right shoulder and elbow, left shoulder and elbow: the two upper arms cross at (60, 50)
    person = {1: (60, 10), 2: (30, 30), 3: (90, 70), 5: (90, 30), 6: (30, 70)}
    candidate, subset = body_rows([person])
    canvas = draw_pose(candidate[:, :2] / (width, height), subset, [], [], height, width)
    dark = [tuple(int(c * 0.6) for c in colour) for colour in COLORS]
    assert tuple(canvas[50, 60]) == dark[4]  # the crossing: limb 4 (l shoulder-elbow), drawn after limb 2, opaque
    assert tuple(canvas[40, 45]) == dark[2]  # limb 2 (r shoulder-elbow) alone
    assert tuple(canvas[20, 45]) == dark[0]  # limb 0 (neck-r shoulder)
    assert tuple(canvas[30, 30]) == COLORS[2] and tuple(canvas[70, 90]) == COLORS[3]  # joints: full colour, on top
    assert tuple(canvas[10, 60]) == COLORS[1] and tuple(canvas[90, 10]) == (0, 0, 0)


def test_draw_hands_and_faces_by_hand():
    hand = np.full((21, 2), -1.0, np.float32)
    hand[0], hand[1] = (20 / 100, 30 / 50), (40 / 100, 30 / 50)
    hand[2] = (0.004, 0.5)  # 0.4 px: truncated to 0, not drawn, and its edge 1-2 neither
    canvas = draw_pose(np.zeros((0, 2)), np.zeros((0, 20)), [hand], [np.array([[0.8, 0.2]], np.float32)], 50, 100)
    assert tuple(canvas[30, 30]) == (255, 0, 0)  # edge 0 (hue 0) between keypoints 0 and 1
    assert tuple(canvas[30, 20]) == (0, 0, 255) and tuple(canvas[33, 40]) == (0, 0, 255)  # keypoint discs r 4
    assert tuple(canvas[10, 80]) == (255, 255, 255) and tuple(canvas[10, 84]) == (0, 0, 0)  # face disc r 3
    assert not canvas[:, :10].any()


def test_draw_pose_differs_from_controlnet_aux_only_where_people_overlap():
    """aux draws person by person (limbs then joints of person 1, then person 2, ...); the original draws
    all limbs of everybody, darkens, then all joints. With overlapping people the maps therefore differ,
    and only on pixels both people cover."""
    from controlnet_aux.open_pose import draw_poses

    height, width = 184, 200
    people = [pixel_person(), pixel_person(offset=(5.0, 1.0))]
    candidate, subset = body_rows(people)
    candidate = candidate[:, :2] / (float(width), float(height))
    ours = draw_pose(candidate, subset, [], [], height, width)
    aux = draw_poses(aux_poses(candidate, subset, [], [], width, height), height, width, draw_hand=False)
    alone = [draw_pose(candidate, subset[n:n + 1], [], [], height, width).any(axis=2) for n in range(2)]
    differ = (ours != aux).any(axis=2)
    assert differ.any() and not (differ & ~(alone[0] & alone[1])).any()
    # person 1's left wrist (part 7) lies under person 2's neck-left hip limb (limb 9): the original keeps
    # the joint on top, aux covers it with the later person's darkened limb
    x, y = (int(v) for v in people[0][7])
    assert tuple(ours[y, x]) == COLORS[7] and tuple(aux[y, x]) == tuple(int(c * 0.6) for c in COLORS[9])
    for n in range(2):  # each person alone: identical
        one = draw_poses(aux_poses(candidate, subset[n:n + 1], [], [], width, height), height, width, draw_hand=False)
        assert np.array_equal(draw_pose(candidate, subset[n:n + 1], [], [], height, width), one)


# === OpenPose 1.1: the detector ======================================================================


def test_full_detector_matches_controlnet_aux_on_one_person():
    """Synthetic body maps, stand-in hand/face networks: the same keypoints as aux, and the same map as
    aux's drawing functions given those keypoints the way the original passes them on."""
    from controlnet_aux.open_pose import OpenposeDetector as AuxOpenpose
    from controlnet_aux.open_pose import draw_poses
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.face import Face
    from controlnet_aux.open_pose.hand import Hand

    paf, heat = synthetic_outputs([PERSON])
    height, width = 184, 288
    image = cv2.GaussianBlur(np.random.default_rng(12).integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 1.5)
    hand_net, face_net = ToyHeatmaps(22, seed=13), ToyHeatmaps(71, seed=14)
    ours = OpenposeV11Detector.from_networks(FixedBody(paf, heat), hand_net, face_net)
    pose = ours.detect(image, **MODES["full"])
    body, hand, face = Body.__new__(Body), Hand.__new__(Hand), Face.__new__(Face)
    body.model, hand.model, face.model = FixedBody(paf, heat), hand_net, ToyHeatmaps(71, seed=14, as_list=True)
    (expected,) = AuxOpenpose(body, hand, face).detect_poses(image, include_hand=True, include_face=True)
    assert len(pose.subset) == 1 and len(pose.hands) == 2 and len(pose.faces) == 1
    assert np.array_equal(pose.candidate, [(k.x, k.y) for k in expected.body.keypoints])
    assert np.array_equal(pose.hands[0], [(k.x, k.y) for k in expected.left_hand])
    assert np.array_equal(pose.hands[1], [(k.x, k.y) for k in expected.right_hand])
    assert np.array_equal(pose.faces[0], [(k.x, k.y) for k in expected.face])
    body_only = ours(image)
    assert np.array_equal(body_only, draw_pose(pose.candidate, pose.subset, [], [], height, width))

    # The original hands the float32 fractions on as Python floats (tolist) and draws int(x · W) in
    # float64; aux keeps np.float32 scalars, whose float32 product rounds back up: a landmark at 73 px
    # is stored as float32(73 / 288) = 0.25347221..., 0.25347221 · 288 = 72.99999 -> drawn at 72 by
    # the original, at 73 by aux. Our map follows the original.
    as_original = aux_poses(pose.candidate, pose.subset, pose.hands, pose.faces, width, height)
    x32 = np.float32(73) / np.float32(288)
    assert int(float(x32) * 288) == 72 and int(x32 * 288) == 73
    fx = np.array([k.x for k in expected.face])
    f32_pixels = [int(x * width) for x in fx]
    f64_pixels = [int(float(x) * width) for x in fx]
    assert 0 < sum(a != b for a, b in zip(f32_pixels, f64_pixels)) and max(a - b for a, b in zip(f32_pixels, f64_pixels)) == 1
    with_face = draw_pose(pose.candidate, pose.subset, [], pose.faces, height, width)
    assert np.array_equal(with_face, draw_poses(as_original, height, width, draw_hand=False))
    assert not np.array_equal(with_face, draw_poses([expected], height, width, draw_hand=False))
    assert np.count_nonzero((with_face == 255).all(axis=2)) > 20  # white face landmarks
    pytest.importorskip("matplotlib", reason="controlnet_aux draws hands with matplotlib's HSV colours")
    canvas = ours(image, **MODES["full"])
    assert np.array_equal(canvas, draw_poses(as_original, height, width))
    assert np.count_nonzero(canvas != with_face) > 100


@pytest.fixture(scope="module")
def openpose_files(tmp_path_factory, facenet_file):
    folder = tmp_path_factory.mktemp("openpose11")
    states = {}
    for name, make, seed in (("body", BodyPoseNet, 2), ("hand", HandPoseNet, 3)):
        states[name] = random_state(make, seed)
        torch.save({k.split(".", 1)[1]: v for k, v in states[name].items()}, folder / f"{name}_pose_model.pth")
    files = Files(openpose_body=folder / "body_pose_model.pth", openpose_hand=folder / "hand_pose_model.pth",
                  openpose_face=facenet_file[1])
    return states, files


def test_detector_reads_the_three_official_files(openpose_files, facenet_file):
    states, files = openpose_files
    det = OpenposeV11Detector(files=files)
    assert torch.equal(det.body_net.state_dict()["model6_2.Mconv7_stage6_L2.bias"], states["body"]["model6_2.Mconv7_stage6_L2.bias"])
    assert torch.equal(det.hand_net.state_dict()["model6.Mconv7_stage6.weight"], states["hand"]["model6.Mconv7_stage6.weight"])
    assert torch.equal(det.face_net.state_dict()["Mconv7_stage6.bias"], facenet_file[0]["Mconv7_stage6.bias"])
    out = det(np.random.default_rng(15).integers(0, 256, (64, 48, 3), dtype=np.uint8), hand=True, face=True)
    assert out.shape == (64, 48, 3) and out.dtype == np.uint8


def test_detector_keeps_odd_sizes():
    det = OpenposeV11Detector(random_init=True)
    for shape in ((17, 1000, 3), (4096, 64, 3)):
        image = np.random.default_rng(16).integers(0, 256, shape, dtype=np.uint8)
        out = det(image, **MODES["full"])
        assert out.shape == shape and out.dtype == np.uint8
