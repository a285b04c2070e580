"""OpenPose (COCO-18 body, optional hands) drawn as the pose ControlNet's control map.

    det = OpenposeDetector()                 # weights "openpose_body", "openpose_hand" (weights.WEIGHTS)
    pose_map = det(image)                    # H×W×3 uint8 RGB drawing
    pose_map, poses = det.detect(image, hand=True)   # plus the keypoints
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from annotator.openpose.body import estimate_body
from annotator.openpose.draw import draw_body, draw_hands
from annotator.openpose.hand import HAND_SCALES, hand_boxes, hand_keypoints, to_image_coordinates
from annotator.openpose.maps import averaged_maps
from annotator.openpose.network import BODY_PAF_CHANNELS, BodyPoseNet, HandPoseNet, build_pose_network, network_runner
from weights.files import WeightFiles

__all__ = ["OpenposeDetector", "Poses", "BodyPoseNet", "HandPoseNet"]

BODY_SCALES = (0.5,)  # the original searched (0.5, 1, 1.5, 2) and kept only 0.5


@dataclass
class Poses:
    """candidate: (n, 4) peaks (x, y, score, id); subset: (people, 20), see annotator.openpose.body;
    hands: one (21, 2) int array of image coordinates per detected hand box."""

    candidate: np.ndarray
    subset: np.ndarray
    hands: list[np.ndarray] = field(default_factory=list)


class OpenposeDetector:
    def __init__(self, device: str = "cpu", random_init: bool = False, files: WeightFiles | None = None):
        self.device, self.random_init, self.files = device, random_init, files
        self.body_net = build_pose_network(BodyPoseNet, "openpose_body", device, random_init, files)
        self._hand_net = None  # loaded on first use: the pose app never draws hands

    @classmethod
    def from_networks(cls, body_net, hand_net, device: str = "cpu") -> "OpenposeDetector":
        """A detector around networks built elsewhere (custom weights, tests)."""
        detector = cls.__new__(cls)
        detector.device, detector.random_init, detector.files = device, False, None
        detector.body_net, detector._hand_net = body_net, hand_net
        return detector

    @property
    def hand_net(self) -> HandPoseNet:
        if self._hand_net is None:
            self._hand_net = build_pose_network(HandPoseNet, "openpose_hand", self.device, self.random_init, self.files)
        return self._hand_net

    def _runner(self, net):
        return network_runner(net, self.device)

    @torch.inference_mode()
    def detect(self, image: np.ndarray, hand: bool = False) -> tuple[np.ndarray, Poses]:
        """RGB H×W×3 uint8 -> (drawing, poses)."""
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # the Caffe-trained networks expect BGR
        maps = averaged_maps(self._runner(self.body_net), bgr, BODY_SCALES)
        pafs, heatmaps = maps[:, :, :BODY_PAF_CHANNELS], maps[:, :, BODY_PAF_CHANNELS:]
        candidate, subset = estimate_body(heatmaps, pafs)
        poses = Poses(candidate, subset)
        canvas = draw_body(np.zeros_like(image), candidate, subset)
        if hand:
            for x, y, side, _ in hand_boxes(candidate, subset, *image.shape[:2]):
                crop = bgr[y:y + side, x:x + side]
                points = hand_keypoints(averaged_maps(self._runner(self.hand_net), crop, HAND_SCALES))
                poses.hands.append(to_image_coordinates(points, x, y))
            canvas = draw_hands(canvas, poses.hands)
        return canvas, poses

    def __call__(self, image: np.ndarray, hand: bool = False) -> np.ndarray:
        return self.detect(image, hand)[0]
