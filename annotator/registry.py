"""The table of detectors: name -> how to build it, its UI parameters and how its map is resized.

Detector contract: `detector(image, **params) -> map`, where `image` is an H×W×3 uint8 RGB array
already resized to the detect resolution by the caller and `map` is H×W×3 uint8 of the same H×W.

Adding a detector
-----------------
1. Write `annotator/<pkg>/` with a detector class taking `(device, random_init, files)`; `random_init=True`
   must build the network with random weights and read no file; `files` (a `weights.WeightFiles`) finds
   the weight files (`annotator.weights.build_network` does both).
2. Add a factory below that imports your package *inside* the function (a broken or missing package
   then only breaks its own entry) and a `DetectorSpec` to `SPECS`:
   `params` are the user-facing knobs (their names are the detector's keyword arguments), `weights`
   the `weights.WEIGHTS` keys the factory resolves, `map_interpolation` how apps resize the map to the
   output size ("nearest", "bilinear" or "none" when the map is made at the output size).
3. Add the name to the expectations in `tests/test_annotator_registry.py` (every registered
   detector is run there on grey/RGB/RGBA/odd-sized input with `random_init=True`).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from annotator.util import AnnotatorInputError, check_image, resize_map
from weights.files import WeightFiles

Detector = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Param:
    """One user-facing parameter: a slider (int/float default) or a checkbox (bool default)."""

    name: str
    label: str
    default: float | int | bool
    minimum: float | int | None = None
    maximum: float | int | None = None
    step: float | int | None = None

    @property
    def kind(self) -> type:
        return type(self.default)

    def coerce(self, value):
        """Return `value` as this parameter's type, or raise AnnotatorInputError naming the label."""
        if self.kind is bool:
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            raise AnnotatorInputError(f"{self.label}: expected true/false, got {value!r}")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise AnnotatorInputError(f"{self.label}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise AnnotatorInputError(f"{self.label}: expected a finite number, got {value!r}")
        if self.kind is int:
            if float(value) != int(value):  # sliders may send 100.0 for 100
                raise AnnotatorInputError(f"{self.label}: expected a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            raise AnnotatorInputError(
                f"{self.label}: {value} is outside the allowed range {self.minimum}..{self.maximum}"
            )
        return value


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    title: str
    factory: Callable[[str, bool, WeightFiles | None], Detector]  # (device, random_init, files) -> detector
    params: tuple[Param, ...] = ()
    map_interpolation: str = "none"
    weights: tuple[str, ...] = ()  # keys of weights.WEIGHTS; empty = no network
    # Fake scribble: the map is resized *between* two stages, so the detector exposes
    # `prepare(image, **params)` (map at detect size) and `finish(map)` (at output size).
    finish_after_resize: bool = False
    _names: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_names", frozenset(p.name for p in self.params))

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def validate(self, params: Mapping | None = None) -> dict:
        """Checked, typed values for every parameter (defaults filled in); unknown names are refused."""
        params = dict(params or {})
        unknown = sorted(set(params) - self._names)
        if unknown:
            raise AnnotatorInputError(
                f"{self.title}: unknown parameter(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(self._names)) or 'none'}"
            )
        return {p.name: p.coerce(params.get(p.name, p.default)) for p in self.params}


# --- factories: each imports its package only when the detector is built ---------------------------


def _canny(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.canny import CannyDetector

    return CannyDetector()


def _scribble(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.scribble import ScribbleDetector

    return ScribbleDetector()


def _hed(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.hed import HEDDetector

    return HEDDetector(device=device, random_init=random_init, files=files)


def _fake_scribble(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.hed import FakeScribbleDetector

    return FakeScribbleDetector(device=device, random_init=random_init, files=files)


def _mlsd(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.mlsd import MLSDDetector

    return MLSDDetector(device=device, random_init=random_init, files=files)


def _openpose(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.openpose import OpenposeDetector

    return OpenposeDetector(device=device, random_init=random_init, files=files)


def _seg(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.uniformer import UniformerDetector

    return UniformerDetector(device=device, random_init=random_init, files=files)


def _depth(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.midas import MidasDepthDetector

    return MidasDepthDetector(device=device, random_init=random_init, files=files)


def _normal(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.midas import MidasNormalDetector

    return MidasNormalDetector(device=device, random_init=random_init, files=files)


def _lineart(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.lineart import LineartDetector

    return LineartDetector(device=device, random_init=random_init, files=files)


def _lineart_coarse(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.lineart import LineartDetector

    return LineartDetector(device=device, random_init=random_init, files=files, coarse=True)


def _lineart_anime(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.lineart_anime import LineartAnimeDetector

    return LineartAnimeDetector(device=device, random_init=random_init, files=files)


def _softedge_hed(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.hed.softedge import SoftEdgeHEDDetector

    return SoftEdgeHEDDetector(device=device, random_init=random_init, files=files)


def _softedge_pidi(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.pidinet import PidiNetDetector

    return PidiNetDetector(device=device, random_init=random_init, files=files)


def _scribble_pidi(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.pidinet import ScribblePidiDetector

    return ScribblePidiDetector(device=device, random_init=random_init, files=files)


def _normalbae(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.normalbae import NormalBaeDetector

    return NormalBaeDetector(device=device, random_init=random_init, files=files)


def _zoe(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.zoe import ZoeDetector
    from annotator.zoe.config import RANDOM_INIT, ZOED_M12_N

    return ZoeDetector(device=device, random_init=random_init, files=files, config=RANDOM_INIT if random_init else ZOED_M12_N)


def _openpose11(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.openpose.detector_v11 import OpenposeV11Detector

    return OpenposeV11Detector(device=device, random_init=random_init, files=files)


def _shuffle(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.shuffle import ContentShuffleDetector

    return ContentShuffleDetector()


def _color_shuffle(device: str, random_init: bool, files: WeightFiles | None) -> Detector:
    from annotator.shuffle import ColorShuffleDetector

    return ColorShuffleDetector()


SHUFFLE_SEED = Param("seed", "Shuffle seed", 12345, 0, 2147483647, 1)

SPECS: tuple[DetectorSpec, ...] = (
    DetectorSpec(
        "canny", "Canny Edge", _canny,
        params=(
            Param("low_threshold", "Canny low threshold", 100, 1, 255, 1),
            Param("high_threshold", "Canny high threshold", 200, 1, 255, 1),
        ),
        map_interpolation="none",
    ),
    DetectorSpec(
        "mlsd", "M-LSD Lines", _mlsd,
        params=(
            Param("value_threshold", "Hough value threshold (MLSD)", 0.1, 0.01, 2.0, 0.01),
            Param("distance_threshold", "Hough distance threshold (MLSD)", 0.1, 0.01, 20.0, 0.01),
        ),
        map_interpolation="nearest",
        weights=("mlsd",),
    ),
    DetectorSpec("hed", "HED Edge", _hed, map_interpolation="bilinear", weights=("hed",)),
    DetectorSpec("scribble", "Scribble (threshold)", _scribble, map_interpolation="none"),
    DetectorSpec(
        "fake_scribble", "Fake Scribble (HED)", _fake_scribble,
        map_interpolation="bilinear", weights=("hed",), finish_after_resize=True,
    ),
    DetectorSpec(
        "openpose", "OpenPose", _openpose,
        params=(Param("hand", "Detect hand", False),),
        map_interpolation="nearest",
        weights=("openpose_body", "openpose_hand"),
    ),
    DetectorSpec("seg", "Uniformer Segmentation", _seg, map_interpolation="nearest", weights=("uniformer",)),
    DetectorSpec("depth", "MiDaS Depth", _depth, map_interpolation="bilinear", weights=("midas",)),
    DetectorSpec(
        "normal", "MiDaS Normal", _normal,
        params=(
            Param("bg_threshold", "Normal background threshold", 0.4, 0.0, 1.0, 0.01),
            Param("alpha", "Normal z constant (alpha)", 2 * math.pi, 0.1, 20.0, 0.01),
        ),
        map_interpolation="bilinear",
        weights=("midas",),
    ),
    # ControlNet 1.1 detectors; the 1.1 apps resize every map bilinearly.
    DetectorSpec("lineart", "Lineart", _lineart, map_interpolation="bilinear", weights=("lineart",)),
    DetectorSpec("lineart_coarse", "Lineart (coarse)", _lineart_coarse, map_interpolation="bilinear",
                 weights=("lineart_coarse",)),
    DetectorSpec("lineart_anime", "Anime Lineart", _lineart_anime, map_interpolation="bilinear",
                 weights=("lineart_anime",)),
    DetectorSpec("softedge_hed", "Soft Edge (HED 1.1)", _softedge_hed, params=(Param("safe", "Safe", False),),
                 map_interpolation="bilinear", weights=("hed",)),
    DetectorSpec("softedge_pidi", "Soft Edge (PiDiNet)", _softedge_pidi, params=(Param("safe", "Safe", False),),
                 map_interpolation="bilinear", weights=("pidinet",)),
    DetectorSpec("scribble_pidi", "Scribble (PiDiNet)", _scribble_pidi, map_interpolation="bilinear",
                 weights=("pidinet",), finish_after_resize=True),
    DetectorSpec("normalbae", "Normal BAE", _normalbae, map_interpolation="bilinear", weights=("normalbae",)),
    DetectorSpec("zoe", "ZoeDepth", _zoe, map_interpolation="bilinear", weights=("zoe",)),
    DetectorSpec(
        "openpose11", "OpenPose 1.1", _openpose11,
        params=(Param("hand", "Detect hands", False), Param("face", "Detect faces", False)),
        map_interpolation="bilinear",
        weights=("openpose_body", "openpose_hand", "openpose_face"),
    ),
    DetectorSpec("shuffle", "Content Shuffle", _shuffle, params=(SHUFFLE_SEED,), map_interpolation="bilinear"),
    DetectorSpec("color_shuffle", "Color Shuffle", _color_shuffle, params=(SHUFFLE_SEED,), map_interpolation="bilinear"),
)

REGISTRY: dict[str, DetectorSpec] = {spec.name: spec for spec in SPECS}


def spec(name: str) -> DetectorSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise AnnotatorInputError(f"unknown annotator {name!r}; available: {', '.join(REGISTRY)}") from None


class Annotator:
    """A built detector bound to its spec: checks the image and the parameters, then runs it (one call at a time:
    a page's preview and a generation may ask for the same detector at once)."""

    def __init__(self, spec: DetectorSpec, detector: Detector):
        self.spec = spec
        self.detector = detector
        self._lock = threading.Lock()

    def __call__(self, image, **params) -> np.ndarray:
        image, values = check_image(image), self.spec.validate(params)
        with self._lock:
            return self.detector(image, **values)

    def control_map(self, image, size: tuple[int, int], **params) -> np.ndarray:
        """The apps' rule: detect on `image` (detect resolution), then resize the map to size = (H, W)."""
        image, values = check_image(image), self.spec.validate(params)
        interpolation = self.spec.map_interpolation
        with self._lock:
            if self.spec.finish_after_resize:
                return self.detector.finish(resize_map(self.detector.prepare(image, **values), size, interpolation))
            return resize_map(self.detector(image, **values), size, interpolation)


# Built detectors. Networks are big, so only detectors of one weight set stay resident (depth and
# normal share MiDaS, hed and fake_scribble share HED); weightless ones (canny, scribble) are kept.
_CACHE: dict[tuple[str, str, bool, WeightFiles | None], Annotator] = {}
_CACHE_LOCK = threading.Lock()  # the UI serves requests from several threads


def available() -> list[str]:
    return list(REGISTRY)


def load(name: str, device: str = "cpu", random_init: bool = False, files: WeightFiles | None = None) -> Annotator:
    """The detector `name` on `device`; `random_init=True` uses random weights and reads no file.

    `files` says where weight files are found (default: `WeightFiles()`, the standard lookup)."""
    key = (name, str(device), bool(random_init), files)
    entry = spec(name)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if entry.weights:
            for other in [k for k in _CACHE if REGISTRY[k[0]].weights not in ((), entry.weights)]:
                del _CACHE[other]
        annotator = Annotator(entry, entry.factory(str(device), bool(random_init), files))
        _CACHE[key] = annotator
        return annotator


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
