"""OpenPose as ControlNet 1.1 runs it: body (smart_resize), optional hands (rewritten estimator) and faces,
drawn with the 1.1 rules (annotator.openpose.draw_v11). The 1.0 detector (annotator.openpose) is untouched.

    det = OpenposeV11Detector()                     # "openpose_body", "openpose_hand", "openpose_face"
    pose_map = det(image)                           # "Openpose": body only
    full_map = det(image, **MODES["full"])          # "Openpose Full": body + hands + faces
    pose = det.detect(image, hand=True, face=True)  # keypoints, coordinates as fractions of W, H
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from annotator.openpose.body import estimate_body
from annotator.openpose.draw_v11 import draw_pose
from annotator.openpose.face import FaceNet, face_boxes, face_heatmaps, face_keypoints
from annotator.openpose.hand import hand_boxes
from annotator.openpose.hand_v11 import hand_points
from annotator.openpose.maps_v11 import body_maps
from annotator.openpose.network import BODY_PAF_CHANNELS, BodyPoseNet, HandPoseNet, load_caffe_file, network_runner
from annotator.weights import build_network

__all__ = ["MODES", "OpenposeV11Detector", "PoseV11", "draw_pose", "normalized"]

# The 1.1 app offers "Openpose" (body) and "Openpose Full" (body + hands + faces).
MODES = {"body": {}, "body+hands": {"hand": True}, "full": {"hand": True, "face": True}}


@dataclass
class PoseV11:
    """candidate: (n, 2) peaks (x / W, y / H); subset: (people, 20) as in annotator.openpose.body;
    hands: (21, 2) float32 per hand box, faces: (k, 2) float32 per face box, also as fractions of W, H
    (a missing hand keypoint is -1 / W, -1 / H)."""

    candidate: np.ndarray
    subset: np.ndarray
    hands: list[np.ndarray] = field(default_factory=list)
    faces: list[np.ndarray] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The original's keypoint dict: {"bodies": {"candidate", "subset"}, "hands", "faces"} of lists."""
        bodies = {"candidate": self.candidate.tolist(), "subset": self.subset.tolist()}
        return {"bodies": bodies, "hands": [h.tolist() for h in self.hands], "faces": [f.tolist() for f in self.faces]}


def normalized(points: np.ndarray, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """Crop points -> image coordinates divided by W and H, in float32 like the original; a coordinate
    < 1e-6 in the crop means 'missing' and becomes -1 / W (or -1 / H), which the drawing skips."""
    points = points.astype(np.float32)
    xs = np.where(points[:, 0] < 1e-6, np.float32(-1), points[:, 0] + np.float32(x0)) / np.float32(width)
    ys = np.where(points[:, 1] < 1e-6, np.float32(-1), points[:, 1] + np.float32(y0)) / np.float32(height)
    return np.stack([xs, ys], axis=1)


class OpenposeV11Detector:
    def __init__(self, device: str = "cpu", random_init: bool = False, files=None):
        self.device, self.random_init, self.files = device, random_init, files
        self.body_net = build_network(BodyPoseNet, "openpose_body", device, random_init, files=files, load=load_caffe_file)
        self._hand_net: nn.Module | None = None  # hand and face networks load on first use
        self._face_net: nn.Module | None = None

    @classmethod
    def from_networks(cls, body_net: nn.Module, hand_net: nn.Module | None = None,
                      face_net: nn.Module | None = None, device: str = "cpu") -> "OpenposeV11Detector":
        """A detector around networks built elsewhere (custom weights, tests)."""
        detector = cls.__new__(cls)
        detector.device, detector.random_init, detector.files = device, False, None
        detector.body_net, detector._hand_net, detector._face_net = body_net, hand_net, face_net
        return detector

    @property
    def hand_net(self) -> nn.Module:
        if self._hand_net is None:
            self._hand_net = build_network(HandPoseNet, "openpose_hand", self.device, self.random_init,
                                           files=self.files, load=load_caffe_file)
        return self._hand_net

    @property
    def face_net(self) -> nn.Module:
        if self._face_net is None:
            self._face_net = build_network(FaceNet, "openpose_face", self.device, self.random_init, files=self.files)
        return self._face_net

    def _runner(self, net):
        return network_runner(net, self.device)

    @torch.inference_mode()
    def detect(self, image: np.ndarray, hand: bool = False, face: bool = False) -> PoseV11:
        """RGB H×W×3 uint8 -> keypoints; hands and faces are searched per person when asked."""
        height, width = image.shape[:2]
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # the Caffe-trained networks expect BGR
        maps = body_maps(self._runner(self.body_net), bgr)
        candidate, subset = estimate_body(maps[:, :, BODY_PAF_CHANNELS:], maps[:, :, :BODY_PAF_CHANNELS])
        pose = PoseV11(candidate[:, :2] / (float(width), float(height)), subset)
        if hand:
            for x, y, side, _ in hand_boxes(candidate, subset, height, width):
                points = hand_points(self._runner(self.hand_net), bgr[y:y + side, x:x + side])
                pose.hands.append(normalized(points, x, y, width, height))
        if face:
            for x, y, side in face_boxes(candidate, subset, height, width):
                heatmaps = face_heatmaps(self.face_net, bgr[y:y + side, x:x + side], self.device)
                points = face_keypoints(heatmaps)
                if len(points):
                    pose.faces.append(normalized(points, x, y, width, height))
        return pose

    def __call__(self, image: np.ndarray, hand: bool = False, face: bool = False) -> np.ndarray:
        pose = self.detect(image, hand, face)
        return draw_pose(pose.candidate, pose.subset, pose.hands, pose.faces, *image.shape[:2])
