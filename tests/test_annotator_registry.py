import math
import re

import cv2
import numpy as np
import pytest

import annotator
from annotator import registry
from annotator.util import AnnotatorInputError
from weights.files import WeightFiles, WeightsUnavailable
from weights.table import WEIGHTS

EXPECTED = {
    # name: map interpolation (how the original apps resize each map to the output size)
    "canny": "none",
    "mlsd": "nearest",
    "hed": "bilinear",
    "scribble": "none",
    "fake_scribble": "bilinear",
    "openpose": "nearest",
    "seg": "nearest",
    "depth": "bilinear",
    "normal": "bilinear",
    **{name: "bilinear" for name in ("lineart", "lineart_coarse", "lineart_anime", "softedge_hed", "softedge_pidi",
                                     "scribble_pidi", "normalbae", "zoe", "openpose11", "shuffle", "color_shuffle")},
}


def test_available_lists_every_detector_in_order():
    assert annotator.available() == list(EXPECTED)
    for name, interpolation in EXPECTED.items():
        spec = annotator.REGISTRY[name]
        assert spec.name == name and spec.title and spec.map_interpolation == interpolation
        assert all(key in WEIGHTS for key in spec.weights)


def test_parameter_defaults_follow_the_apps():
    canny = annotator.REGISTRY["canny"].defaults()
    assert canny == {"low_threshold": 100, "high_threshold": 200}
    mlsd = annotator.REGISTRY["mlsd"]
    assert mlsd.defaults() == {"value_threshold": 0.1, "distance_threshold": 0.1}
    assert [(p.minimum, p.maximum, p.step) for p in mlsd.params] == [(0.01, 2.0, 0.01), (0.01, 20.0, 0.01)]
    assert annotator.REGISTRY["openpose"].defaults() == {"hand": False}
    assert annotator.REGISTRY["normal"].defaults() == {"bg_threshold": 0.4, "alpha": 2 * math.pi}


def test_validate_coerces_and_fills_defaults():
    spec = annotator.REGISTRY["canny"]
    assert spec.validate({"low_threshold": 50.0}) == {"low_threshold": 50, "high_threshold": 200}
    assert spec.validate(None) == spec.defaults()
    assert annotator.REGISTRY["openpose"].validate({"hand": np.bool_(True)}) == {"hand": True}
    assert annotator.REGISTRY["mlsd"].validate({"value_threshold": np.float32(0.5)})["value_threshold"] == 0.5


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("canny", {"low_threshold": 0}, "Canny low threshold: 0 is outside"),
        ("canny", {"high_threshold": 256}, "Canny high threshold: 256 is outside"),
        ("canny", {"low_threshold": 100.5}, "Canny low threshold: expected a whole number"),
        ("canny", {"low_threshold": "100"}, "Canny low threshold: expected a number"),
        ("canny", {"low_threshold": True}, "Canny low threshold: expected a number"),
        ("mlsd", {"value_threshold": float("nan")}, "Hough value threshold \\(MLSD\\): expected a finite"),
        ("openpose", {"hand": 1}, "Detect hand: expected true/false"),
        ("hed", {"resolution": 512}, "unknown parameter\\(s\\) resolution"),
    ],
)
def test_validate_rejects_with_the_label(name, params, message):
    with pytest.raises(AnnotatorInputError, match=message):
        annotator.REGISTRY[name].validate(params)


def test_unknown_detector():
    with pytest.raises(AnnotatorInputError, match="unknown annotator 'sobel'"):
        annotator.load("sobel")


def test_cache_keeps_one_network():
    registry.clear_cache()
    canny = annotator.load("canny")
    assert annotator.load("canny") is canny
    hed = annotator.load("hed", random_init=True)
    assert annotator.load("hed", random_init=True) is hed
    annotator.load("mlsd", random_init=True)  # a second network evicts the first
    assert annotator.load("hed", random_init=True) is not hed
    assert annotator.load("canny") is canny  # weightless detectors stay
    assert sum(1 for key in registry._CACHE if registry.REGISTRY[key[0]].weights) == 1


@pytest.mark.parametrize("name, key, filename", [("hed", "hed", "ControlNetHED.pth"), ("mlsd", "mlsd", "mlsd_large_512_fp32.pth")])
def test_missing_weights_name_the_file(tmp_path, monkeypatch, name, key, filename):
    monkeypatch.setenv("ANNOTATOR_CKPTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        WeightFiles().resolve(key)
        pytest.skip(f"{filename} is installed on this machine")
    except WeightsUnavailable:
        pass
    registry.clear_cache()
    with pytest.raises(WeightsUnavailable, match=filename):
        annotator.load(name)


def inputs():
    """Grey (2-D), RGBA and odd-sized RGB uint8 images: three network runs per detector in all."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    rgb[20:40, 10:70] = 255
    rgb[28:32] = 0
    rgba = np.concatenate([rgb, rng.integers(0, 256, (64, 80, 1), dtype=np.uint8)], axis=2)
    odd = cv2.resize(rgb, (93, 67), interpolation=cv2.INTER_LINEAR)
    return {"grey": rgb[:, :, 1].copy(), "rgba": rgba, "odd": odd}


BAD_INPUTS = [
    np.zeros((64, 64, 3), np.float32),
    np.zeros((64, 64, 2), np.uint8),
    np.zeros((1, 64, 64, 3), np.uint8),
    np.zeros((0, 64, 3), np.uint8),
    np.zeros((4097, 16, 3), np.uint8),
    "image.png",
]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_detector_contract(name):
    """Grey, RGB, RGBA and odd-sized uint8 in -> H×W×3 uint8 out; bad input -> AnnotatorInputError."""
    detector = annotator.load(name, random_init=True)
    for kind, img in inputs().items():
        out = detector(img)
        assert out.shape == img.shape[:2] + (3,) and out.dtype == np.uint8, kind
    for bad in BAD_INPUTS:
        with pytest.raises(AnnotatorInputError):
            detector(bad)
    for param in annotator.REGISTRY[name].params:
        if param.maximum is not None:
            with pytest.raises(AnnotatorInputError, match=re.escape(param.label)):
                detector(inputs()["odd"], **{param.name: param.maximum + 1})


@pytest.mark.parametrize("name, size", [("canny", (64, 80)), ("scribble", (64, 80)), ("mlsd", (128, 160)), ("hed", (96, 120))])
def test_control_map_resizes_with_the_spec_rule(name, size):
    detector = annotator.load(name, random_init=True)
    img = inputs()["rgba"]
    control = detector.control_map(img, size)
    expected = annotator.resize_map(detector(img), size, annotator.REGISTRY[name].map_interpolation)
    assert control.shape == size + (3,) and (control == expected).all()


def test_fake_scribble_control_map_resizes_before_thinning():
    detector = annotator.load("fake_scribble", random_init=True)
    img = inputs()["odd"]
    control = detector.control_map(img, (128, 160))
    hed_map = detector.detector.prepare(img)
    expected = detector.detector.finish(annotator.resize_map(hed_map, (128, 160), "bilinear"))
    assert control.shape == (128, 160, 3) and (control == expected).all()
    assert set(np.unique(control)) <= {0, 255}
