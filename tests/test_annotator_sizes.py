"""Every registered detector (random weights) on a test photo and on awkward sizes: an H×W×3 uint8 map of the
input's size, and a message (not a crash) for an image too small to use."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import annotator
from annotator.util import AnnotatorInputError
from apps.images import read_image

PHOTO = Path(__file__).resolve().parents[1] / "test_imgs" / "chelsea.png"
ODD_SIZES = [(17, 1000), (4096, 64)]
# The 1.0 OpenPose scales the short side of its input to 184 px, so a 17×1000 image would become 184×10824: it
# refuses such aspect ratios with a message (its 1.1 successor caps the long side instead).
REFUSES_EXTREME_ASPECT = {"openpose"}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return read_image(PHOTO)


@pytest.mark.parametrize("name", annotator.available())
def test_detector_keeps_the_size_of_any_input(name, photo):
    detector = annotator.load(name, random_init=True)
    rng = np.random.default_rng(0)
    for image in [photo, *(rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ODD_SIZES)]:
        try:
            out = detector(image)
        except AnnotatorInputError as err:
            assert name in REFUSES_EXTREME_ASPECT and "aspect ratio" in str(err) and image.shape[:2] == (17, 1000)
            continue
        assert out.dtype == np.uint8 and out.shape == (*image.shape[:2], 3), (name, image.shape)


@pytest.mark.parametrize("name", annotator.available())
def test_a_one_pixel_image_is_refused_with_a_message(name):
    with pytest.raises(AnnotatorInputError, match="at least 16 px per side"):
        annotator.load(name, random_init=True)(np.zeros((1, 1, 3), np.uint8))
