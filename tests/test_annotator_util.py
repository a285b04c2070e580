import cv2
import numpy as np
import pytest

from annotator.util import HWC3, MAX_SIDE, AnnotatorInputError, check_image, resize_image, resize_map


def test_hwc3_grey_and_single_channel_are_replicated():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for img in (grey, grey[:, :, None]):
        out = HWC3(img)
        assert out.shape == (3, 4, 3) and (out == grey[:, :, None]).all()


def test_hwc3_rgb_is_returned_unchanged():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert HWC3(rgb) is rgb


def test_hwc3_rgba_is_composited_over_white():
    rgba = np.array([[[200, 100, 0, 128], [10, 20, 30, 255], [10, 20, 30, 0]]], np.uint8)
    # 200·128/255 + 255·127/255 = 227.39 -> 227; 100 -> 177.2 -> 177; 0 -> 127 exactly, but
    # 126.99999 in float32, truncated to 126 as in the original (float32 maths, then astype)
    assert HWC3(rgba).tolist() == [[[227, 177, 126], [10, 20, 30], [255, 255, 255]]]


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8)])
def test_hwc3_rejects_other_inputs(bad):
    with pytest.raises(AnnotatorInputError):
        HWC3(bad)


@pytest.mark.parametrize(
    "shape, resolution, expected",
    [((480, 640), 512, (512, 704)), ((1080, 1920), 512, (512, 896)), ((600, 400), 384, (576, 384)), ((500, 333), 512, (768, 512))],
)
def test_resize_image_examples(shape, resolution, expected):
    out = resize_image(np.zeros(shape + (3,), np.uint8), resolution)
    assert out.shape == expected + (3,)


def test_resize_image_interpolation_depends_on_direction():
    img = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    up = resize_image(img, 128)  # k = 128/48 > 1: Lanczos-4 to 128×192
    assert (up == cv2.resize(img, (192, 128), interpolation=cv2.INTER_LANCZOS4)).all()
    big = np.random.default_rng(2).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    down = resize_image(big, 128)  # k < 1: area to 128×192
    assert (down == cv2.resize(big, (192, 128), interpolation=cv2.INTER_AREA)).all()


def test_resize_image_rounds_half_to_even():
    # 96 px at k = 1: 96/64 = 1.5 rounds to 2 (-> 128), 160/64 = 2.5 rounds to 2 (-> 128)
    assert resize_image(np.zeros((96, 160, 3), np.uint8), 96).shape == (128, 128, 3)


def test_resize_image_refuses_degenerate_targets():
    with pytest.raises(AnnotatorInputError, match="cannot resize"):
        resize_image(np.zeros((64, 64, 3), np.uint8), 20)


def test_resize_map_modes():
    m = np.zeros((4, 4, 3), np.uint8)
    m[:2] = 255
    nearest = resize_map(m, (8, 6), "nearest")
    assert nearest.shape == (8, 6, 3) and set(np.unique(nearest)) == {0, 255}
    bilinear = resize_map(m, (8, 6), "bilinear")
    assert 0 < bilinear[3, 0, 0] < 255 or 0 < bilinear[4, 0, 0] < 255
    assert resize_map(m, (4, 4), "none") is m
    with pytest.raises(ValueError):
        resize_map(m, (8, 8), "none")
    with pytest.raises(ValueError):
        resize_map(m, (8, 8), "cubic")


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 1), (20, 30, 3), (20, 30, 4)])
def test_check_image_accepts_uint8_layouts(shape):
    img = np.full(shape, 9, np.uint8)
    out = check_image(img)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_check_image_makes_views_contiguous():
    img = np.zeros((40, 40, 3), np.uint8)[::2, ::-1]
    assert check_image(img).flags.c_contiguous


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((20, 20, 3), np.float32), "uint8"),
        (np.zeros((20, 20, 3), np.int64), "uint8"),
        (np.zeros((20, 20, 2), np.uint8), "shape"),
        (np.zeros((2, 20, 20, 3), np.uint8), "shape"),
        (np.zeros((0, 20, 3), np.uint8), "empty"),
        (np.zeros((8, 20, 3), np.uint8), "at least"),
        (np.zeros((MAX_SIDE + 1, 16), np.uint8), "at most"),
        ([[0, 1], [2, 3]], "numpy"),
        (None, "numpy"),
    ],
)
def test_check_image_rejects(bad, message):
    with pytest.raises(AnnotatorInputError, match=message):
        check_image(bad)
