"""The ControlNet 1.1 apps without a server: how each Preprocessor choice makes the map (detector at the
Preprocessor Resolution with the choice's fixed arguments, or the full-size upload; bilinear to the output
size; scribble thinning, lineart inversion), the 1.1 controls and defaults, the checks of every new value,
the special apps (shuffle seeding, tile, inpaint) and 1.1 units on the multi page."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from annotator.hed import fake_scribble
from annotator.registry import REGISTRY
from annotator.util import resize_image
from apps.errors import InvalidInput
from apps.multi_request import ANNOTATOR_APPS, DEFAULT_WEIGHTS, check_unit, unit_maps
from apps.registry import APPS, GROUPS
from apps.spec import validate
from apps.v11.common import A_PROMPT, N_PROMPT, preprocessed, preprocessed_maps
from tests.apps_server import synthetic_image

V11 = [spec for spec in GROUPS["ControlNet 1.1"]]
STANDARD = [spec for spec in V11 if spec.condition is preprocessed]
CHOICES = [(spec, choice) for spec in STANDARD for choice in spec.preprocessors]
H0, W0 = 200, 300  # input size: not a multiple of 64, so every resize is real
RESOLUTION, DETECT = 256, 384  # output 256×384, detector input 384×576


class RecordingBackend:
    """Stands in for `apps.backend.Backend`: every detector returns a fixed random map of its input's size and
    records what it was given."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def map_of(height: int, width: int) -> np.ndarray:
        return np.random.default_rng(height * 10007 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)

    def detector(self, name: str):
        def run(image: np.ndarray, **kwargs) -> np.ndarray:
            self.calls.append((name, image.shape, kwargs))
            return self.map_of(*image.shape[:2])

        return run


@pytest.fixture()
def image() -> np.ndarray:
    return synthetic_image(H0, W0)


def values_for(spec, **changes) -> dict:
    return {p.name: p.default for p in spec.controls} | {"image_resolution": RESOLUTION, "detect_resolution": DETECT} | changes


def maps(spec, choice, image, **detector_values):
    backend = RecordingBackend()
    params = {p.name: p.default for p in spec.params} | detector_values
    control, shown = preprocessed_maps(spec, backend, image, choice, RESOLUTION, DETECT, params)
    return backend, control, shown


def bilinear(x: np.ndarray, height: int = 256, width: int = 384) -> np.ndarray:
    return cv2.resize(x, (width, height), interpolation=cv2.INTER_LINEAR)


# ---- the map of every Preprocessor choice -----------------------------------------------------------------------


@pytest.mark.parametrize("spec,choice", CHOICES, ids=[f"{s.name}-{c.label}" for s, c in CHOICES])
def test_each_choice_makes_its_map(spec, choice, image):
    backend, control, shown = maps(spec, choice, image)
    assert control.shape == shown.shape == (256, 384, 3) and control.dtype == shown.dtype == np.uint8
    if choice.detector is None:  # the full-size upload itself, bilinear to the output size
        assert backend.calls == []
        source = image
    else:
        (name, given, kwargs), = backend.calls
        assert name == choice.detector and given == (384, 576, 3)  # the Preprocessor Resolution image
        accepted = {p.name for p in REGISTRY[name].params}
        assert kwargs == {**choice.kwargs, **{p.name: p.default for p in spec.params if p.name in accepted}}
        REGISTRY[name].validate(kwargs)  # the real detector takes them
        source = RecordingBackend.map_of(384, 576)
    expected = spec.finish(bilinear(source))
    assert np.array_equal(shown, expected)
    assert np.array_equal(control, 255 - expected if spec.name in ("v11_lineart", "v11_lineart_anime") else expected)


def test_maps_are_resized_bilinearly_not_nearest(image):
    spec = APPS["v11_seg"]
    _, control, _ = maps(spec, spec.preprocessors[0], image)
    nearest = cv2.resize(RecordingBackend.map_of(384, 576), (384, 256), interpolation=cv2.INTER_NEAREST)
    assert not np.array_equal(control, nearest)


def test_fixed_arguments_of_the_choices():
    kwargs = {f"{s.name}/{c.label}": dict(c.kwargs) for s, c in CHOICES if c.kwargs}
    assert kwargs == {"v11_softedge/SoftEdge_PIDI_safe": {"safe": True}, "v11_softedge/SoftEdge_HED_safe": {"safe": True},
                      "v11_openpose/Openpose_Full": {"hand": True, "face": True}}


def test_canny_thresholds_reach_the_detector(image):
    spec = APPS["v11_canny"]
    backend, _, _ = maps(spec, spec.preprocessors[0], image, low_threshold=50, high_threshold=150)
    assert backend.calls[0][2] == {"low_threshold": 50, "high_threshold": 150}


def test_lineart_is_shown_as_drawn_and_fed_inverted(image):
    spec = APPS["v11_lineart"]
    _, control, shown = maps(spec, spec.preprocessors[0], image)
    assert np.array_equal(shown, bilinear(RecordingBackend.map_of(384, 576)))  # dark lines on white, as detected
    assert np.array_equal(control, 255 - shown)
    assert spec.to_control(shown).tobytes() == (255 - shown).tobytes()


def test_scribble_thins_even_an_uploaded_map():
    spec = APPS["v11_scribble"]
    strokes = np.zeros((H0, W0, 3), np.uint8)
    cv2.line(strokes, (20, 30), (280, 170), (255, 255, 255), 9)
    _, control, shown = maps(spec, spec.preprocessors[-1], strokes)
    assert np.array_equal(shown, fake_scribble(bilinear(strokes)))
    assert set(np.unique(shown)) == {0, 255} and np.array_equal(control, shown)
    assert not np.array_equal(shown, bilinear(strokes))


def test_the_real_detectors_run_for_every_choice():
    """Every choice through the real (random-weight) detectors: maps at the output size."""
    from apps.backend import Backend
    from cldm.shared_model import SharedModel

    backend = Backend(SharedModel(tiny=True, device="cpu"))
    image = synthetic_image(128, 192)
    for spec, choice in CHOICES:
        values = {p.name: p.default for p in spec.params}
        control, shown = preprocessed_maps(spec, backend, image, choice, 128, 128, values)
        assert control.shape == shown.shape == (128, 192, 3), (spec.name, choice.label)


# ---- controls, defaults and checks --------------------------------------------------------------------------------


def test_every_1_1_app_is_registered():
    assert [s.name for s in V11] == ["v11_canny", "v11_mlsd", "v11_scribble", "v11_scribble_interactive", "v11_softedge",
                                    "v11_openpose", "v11_seg", "v11_depth", "v11_normalbae", "v11_lineart",
                                    "v11_lineart_anime", "v11_shuffle", "v11_ip2p", "v11_tile", "v11_inpaint"]
    assert all(s.weights == (f"cn11_{s.name[4:]}_fp16", f"cn11_{s.name[4:]}") for s in V11
               if s.name not in ("v11_scribble_interactive",))
    assert APPS["v11_scribble_interactive"].weights == ("cn11_scribble_fp16", "cn11_scribble")


def test_1_1_defaults():
    for spec in V11:
        controls = {p.name: p for p in spec.controls}
        assert controls["seed"].default == 12345 and controls["eta"].default == 1.0, spec.name
        assert controls["ddim_steps"].default == (32 if spec.name == "v11_tile" else 20), spec.name
        assert controls["image_resolution"].maximum == (2048 if spec.name in ("v11_tile", "v11_lineart_anime") else 768)
        assert ("guess_mode" in controls) == (spec.name not in ("v11_shuffle", "v11_lineart_anime")), spec.name
        has_detector = any(p.detector for p in spec.preprocessors) and spec.name != "v11_shuffle"
        assert ("detect_resolution" in controls) == has_detector, spec.name
        if has_detector:
            detect = controls["detect_resolution"]
            assert (detect.label, detect.default, detect.minimum, detect.maximum) == ("Preprocessor Resolution", 512, 128, 1024)
        if spec.name not in ("v11_lineart_anime", "v11_tile"):
            assert (spec.a_prompt, spec.n_prompt) == (A_PROMPT, N_PROMPT)
    assert APPS["v11_tile"].n_prompt.startswith("blur, ")
    assert APPS["v11_lineart_anime"].a_prompt.startswith("masterpiece")
    assert [p.label for p in APPS["v11_lineart_anime"].preprocessors] == ["None", "Lineart_Anime"]
    assert [p.label for p in APPS["v11_shuffle"].preprocessors] == ["None", "Shuffle"]


def test_preprocessor_is_checked(image):
    spec = APPS["v11_softedge"]
    assert validate(spec, values_for(spec), "x", "", "", None).preprocessor.label == "SoftEdge_PIDI"
    assert validate(spec, values_for(spec), "x", "", "", None, preprocessor="None").preprocessor.detector is None
    with pytest.raises(InvalidInput, match="Preprocessor: 'Canny' is not one of SoftEdge_PIDI, SoftEdge_PIDI_safe"):
        validate(spec, values_for(spec), "x", "", "", None, preprocessor="Canny")
    with pytest.raises(InvalidInput, match="no preprocessor choice"):
        validate(APPS["canny"], values_for(APPS["canny"]), "x", "", "", None, preprocessor="Canny")
    with pytest.raises(InvalidInput, match="Preprocessor Resolution"):
        validate(spec, values_for(spec, detect_resolution=64), "x", "", "", None)


def test_standard_condition_runs_the_chosen_preprocessor(image):
    spec = APPS["v11_openpose"]
    backend = RecordingBackend()
    request = validate(spec, values_for(spec), "x", "", "", None, preprocessor="Openpose")
    conditioning = preprocessed(spec, backend, image, request)
    assert backend.calls[0][0] == "openpose11" and backend.calls[0][2] == {}
    assert conditioning.mode is None and conditioning.init is None and conditioning.shown.shape == (256, 384, 3)


# ---- the multi page ------------------------------------------------------------------------------------------------


def test_1_1_choices_are_multi_units(image):
    assert "v11_lineart/Lineart_Coarse" in ANNOTATOR_APPS and DEFAULT_WEIGHTS["v11_lineart/Lineart_Coarse"] == "cn11_lineart_fp16"
    assert not any(name.startswith(("v11_tile", "v11_inpaint", "v11_shuffle", "v11_lineart_anime")) for name in ANNOTATOR_APPS)
    assert ANNOTATOR_APPS["canny"] is APPS["canny"]  # the 1.0 annotators run as before
    unit = check_unit(1, image, "v11_lineart/Lineart", params={"detect_resolution": DETECT})
    assert unit.weights == "cn11_lineart_fp16"
    backend = RecordingBackend()
    control, shown = unit_maps(backend, unit, RESOLUTION, None)
    assert backend.calls[0][:2] == ("lineart", (384, 576, 3))
    assert np.array_equal(control, 255 - shown)
    with pytest.raises(InvalidInput, match="Unit 2: annotator v11_canny/Canny has no setting"):
        check_unit(2, image, "v11_canny/Canny", params={"safe": True})


# ---- the special apps: shuffle, tile, inpaint, anime ----------------------------------------------------------------


@pytest.fixture(scope="module")
def backend():
    from apps.backend import Backend
    from cldm.shared_model import SharedModel

    return Backend(SharedModel(tiny=True, device="cpu"))


def request_for(name: str, preprocessor: str | None = None, **changes):
    spec = APPS[name]
    values = values_for(spec, num_samples=1, ddim_steps=2, **changes)
    return spec, validate(spec, values, "a test picture", spec.a_prompt, spec.n_prompt, None, preprocessor=preprocessor)


def test_shuffle_map_follows_the_seed(image):
    from annotator.shuffle import ContentShuffleDetector
    from cldm.control import ControlMode

    spec, request = request_for("v11_shuffle", "Shuffle", seed=5)
    conditioning = spec.condition(spec, RecordingBackend(), image, request)
    expected = ContentShuffleDetector()(image, seed=5, size=(256, 384))  # the full-size input, warped to the output size
    assert np.array_equal(conditioning.control, expected) and np.array_equal(conditioning.shown, expected)
    assert conditioning.mode is ControlMode.CONDITIONAL and conditioning.seed == 5
    _, other = request_for("v11_shuffle", "Shuffle", seed=6)
    assert not np.array_equal(spec.condition(spec, RecordingBackend(), image, other).control, expected)
    _, random_seed = request_for("v11_shuffle", "Shuffle", seed=-1)
    drawn = spec.condition(spec, RecordingBackend(), image, random_seed)
    assert 0 <= drawn.seed <= 65535
    assert np.array_equal(drawn.control, ContentShuffleDetector()(image, seed=drawn.seed, size=(256, 384)))


def test_shuffle_without_preprocessor_shows_no_map(image):
    spec, request = request_for("v11_shuffle", "None")
    conditioning = spec.condition(spec, RecordingBackend(), image, request)
    assert conditioning.shown is None and np.array_equal(conditioning.control, resize_image(image, RESOLUTION))


def test_shuffle_run_uses_one_seed_for_map_and_samples(backend, image):
    from annotator.shuffle import ContentShuffleDetector
    from apps.spec import run_app

    spec, request = request_for("v11_shuffle", "Shuffle", seed=-1)
    result = run_app(spec, backend, image, request)
    assert np.array_equal(result.display_map, ContentShuffleDetector()(image, seed=result.seed, size=(256, 384)))
    _, fixed = request_for("v11_shuffle", "Shuffle", seed=result.seed)
    again = run_app(spec, backend, image, fixed)
    assert np.array_equal(again.samples[0], result.samples[0])
    assert backend.model.status()["active_control"] == "cn11_shuffle_fp16"


def test_tile_starts_from_the_input(image):
    from annotator.processing import tile_control
    from cldm.pipeline import Img2Img

    spec, request = request_for("v11_tile", denoise=0.6)
    conditioning = spec.condition(spec, RecordingBackend(), image, request)
    assert np.array_equal(conditioning.control, tile_control(image, (256, 384)))
    assert np.array_equal(conditioning.shown, image) and conditioning.shown_kind == "input"
    assert isinstance(conditioning.init, Img2Img) and conditioning.init.denoise == 0.6
    assert np.array_equal(conditioning.init.image, resize_image(image, RESOLUTION))
    with pytest.raises(InvalidInput, match="Denoising Strength"):
        request_for("v11_tile", denoise=0.05)


def masked(image: np.ndarray, painted: bool = True, uploaded: np.ndarray | None = None):
    from apps.images import MaskedUpload

    layer = np.zeros((*image.shape[:2], 4), np.uint8)
    if painted:
        layer[60:140, 100:200] = (255, 0, 255, 255)
    return MaskedUpload({"background": np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]), "layers": [layer],
                         "composite": None}, uploaded)


def test_inpaint_mask_from_strokes_and_upload(image):
    from apps.images import masked_input

    got, mask = masked_input(masked(image))
    assert np.array_equal(got, image) and mask.dtype == np.uint8
    assert mask[100, 150] == 255 and mask[10, 10] == 0 and mask.sum() == 255 * 80 * 100
    upload = np.zeros((H0 * 2, W0 * 2, 4), np.uint8)  # another size, RGBA: white and opaque = repaint
    upload[:40, :40] = 255
    upload[100:, 100:, :3] = 255  # white but transparent: kept
    _, both = masked_input(masked(image, uploaded=upload))
    assert both[5, 5] == 255 and both[100, 150] == 255 and both[150, 250] == 0
    _, only_upload = masked_input(masked(image, painted=False, uploaded=upload[:, :, :3]))
    assert only_upload[5, 5] == 255 and only_upload[150, 250] == 255
    with pytest.raises(InvalidInput, match="No mask"):
        masked_input(masked(image, painted=False))
    with pytest.raises(InvalidInput, match="No input image"):
        masked_input(masked(image).__class__({"background": None, "layers": [], "composite": None}))


def test_inpaint_conditioning(image):
    from annotator.processing import inpaint_mask
    from apps.images import masked_input
    from cldm.pipeline import Inpaint

    spec, request = request_for("v11_inpaint", mask_blur=3.0)
    conditioning = spec.condition(spec, RecordingBackend(), masked(image), request)
    resized = resize_image(image, RESOLUTION)
    soft = inpaint_mask(masked_input(masked(image))[1], (256, 384), 3.0)
    assert isinstance(conditioning.init, Inpaint) and np.array_equal(conditioning.init.mask, soft)
    assert np.array_equal(conditioning.control, resized) and np.array_equal(conditioning.init.image, resized)
    hole = soft > 0.5
    assert hole.any() and (conditioning.shown[hole] == 0).all() and np.array_equal(conditioning.shown[~hole], resized[~hole])
    with pytest.raises(InvalidInput, match="Mask Blur"):
        request_for("v11_inpaint", mask_blur=8.0)


def test_inpaint_run_keeps_the_unmasked_pixels(backend):
    from apps.spec import run_app

    image = synthetic_image(256, 384)  # already the output size: no resampling of the kept pixels
    spec, request = request_for("v11_inpaint", mask_blur=1.0)
    result = run_app(spec, backend, masked(image), request)
    far = np.ones((256, 384), bool)
    far[40:160, 80:220] = False  # the stroke (60:140, 100:200) and the blur's reach
    assert np.array_equal(result.samples[0][far], image[far])
    assert not np.array_equal(result.samples[0][100, 150], image[100, 150])
    assert result.display_kind == "hint" and backend.model.status()["active_control"] == "cn11_inpaint_fp16"


def test_anime_encodes_prompts_its_way(backend, image):
    from dataclasses import replace

    from apps.spec import run_app

    spec, request = request_for("v11_lineart_anime", "None", seed=3)
    assert spec.generation == {"prompt_chunks": 3, "clip_skip": 2}
    long_prompt = replace(request, prompt=", ".join(["a girl with long hair in a garden"] * 20))  # > 77 tokens
    anime = run_app(spec, backend, image, long_prompt).samples[0]
    plain = run_app(replace(spec, generation={}), backend, image, long_prompt).samples[0]
    assert not np.array_equal(anime, plain)


# ---- the headless command ----------------------------------------------------------------------------------------


def generate(*args: str) -> int:
    import launch

    return launch.main(["generate", *args])


FAST = ["--tiny", "--steps", "1", "--image-resolution", "256", "--seed", "5"]


def test_cli_runs_1_1_apps(tmp_path, capsys):
    from tests.apps_server import write_png

    photo = write_png(tmp_path / "photo.png", synthetic_image(256, 320))
    mask = np.zeros((256, 320), np.uint8)
    mask[100:150, 100:200] = 255
    mask_file = write_png(tmp_path / "mask.png", mask)
    out = str(tmp_path / "out")
    assert generate("--app", "v11_softedge", "--preprocessor", "SoftEdge_HED_safe", "--param", "detect_resolution=128",
                    "--image", str(photo), "--prompt", "x", "--out", out, *FAST) == 0
    assert generate("--app", "v11_inpaint", "--mask", str(mask_file), "--image", str(photo), "--prompt", "x", "--out", out,
                    *FAST) == 0
    assert generate("--app", "v11_tile", "--denoise", "0.5", "--image", str(photo), "--prompt", "x", "--out", out, *FAST) == 0
    assert generate("--app", "v11_shuffle", "--image", str(photo), "--prompt", "x", "--out", out, *FAST) == 0
    names = [p.rsplit("/", 1)[-1] for p in capsys.readouterr().out.split()]
    assert names == ["photo_v11_softedge_map.png", "photo_v11_softedge_seed5_0.png", "photo_v11_inpaint_hint.png",
                     "photo_v11_inpaint_seed5_0.png", "photo_v11_tile_input.png", "photo_v11_tile_seed5_0.png",
                     "photo_v11_shuffle_seed5_0.png"]


@pytest.mark.parametrize("args,message", [
    (["--app", "v11_softedge", "--preprocessor", "Canny"], "Preprocessor: 'Canny' is not one of"),
    (["--app", "canny", "--preprocessor", "Canny"], "no preprocessor choice"),
    (["--app", "v11_inpaint"], "--mask FILE is required"),
    (["--app", "v11_canny", "--mask", "m.png"], "--mask is for the inpaint app"),
    (["--app", "v11_canny", "--denoise", "0.5"], "--denoise is for the tile app"),
    (["--app", "v11_tile", "--denoise", "1.5"], "Denoising Strength"),
])
def test_cli_checks_1_1_options(tmp_path, capsys, args, message):
    from tests.apps_server import write_png

    photo = write_png(tmp_path / "photo.png", synthetic_image(256, 320))
    assert generate(*args, "--image", str(photo), "--prompt", "x", "--out", str(tmp_path / "o"), "--tiny") == 2
    assert message in capsys.readouterr().err


def test_cli_from_png_restores_the_1_1_settings(tmp_path, capsys):
    from apps.png_info import read_png_info
    from tests.apps_server import write_png

    photo = write_png(tmp_path / "photo.png", synthetic_image(256, 320))
    assert generate("--app", "v11_tile", "--denoise", "0.4", "--image", str(photo), "--prompt", "x",
                    "--out", str(tmp_path / "a"), *FAST) == 0
    sample = capsys.readouterr().out.split()[-1]
    info = read_png_info(sample)
    assert info.controlnets[0].params["denoise"] == 0.4 and info.controlnets[0].module == "None"
    assert generate("--from-png", sample, "--image", str(photo), "--out", str(tmp_path / "b"), "--tiny") == 0
    again = read_png_info(capsys.readouterr().out.split()[-1])
    assert again.controlnets[0].params["denoise"] == 0.4 and again.app == "v11_tile"
    assert generate("--app", "v11_softedge", "--preprocessor", "SoftEdge_HED_safe", "--param", "detect_resolution=128",
                    "--image", str(photo), "--prompt", "x", "--out", str(tmp_path / "c"), *FAST) == 0
    sample = capsys.readouterr().out.split()[-1]
    assert read_png_info(sample).controlnets[0].module == "SoftEdge_HED_safe"
    assert generate("--from-png", sample, "--image", str(photo), "--out", str(tmp_path / "d"), "--tiny") == 0
    assert read_png_info(capsys.readouterr().out.split()[-1]).controlnets[0].module == "SoftEdge_HED_safe"
    assert generate("--app", "v11_shuffle", "--preprocessor", "Shuffle", "--image", str(photo), "--prompt", "x",
                    "--out", str(tmp_path / "e"), *FAST) == 0
    assert read_png_info(capsys.readouterr().out.split()[-1]).control_mode == "conditional"


@pytest.mark.parametrize("name", ["v11_softedge", "v11_inpaint", "v11_tile"])
def test_page_restore_fills_the_1_1_inputs(backend, name):
    """A dropped PNG's settings in the order of the page's inputs after the image: (inpaint: the mask upload, left
    alone), prompt, (the Preprocessor), the controls, added/negative prompt, weights, Fast, the four choices."""
    import gradio as gr

    from apps.image_settings import app_info
    from apps.restore_drop import app_restorer

    spec = APPS[name]
    preprocessor = spec.preprocessors[-2].label if spec.preprocessor_radio else None  # not the default
    request = validate(spec, values_for(spec), "a prompt", "a", "n", spec.weights[-1], preprocessor=preprocessor)
    updates, message, fast = app_restorer(spec, backend)(app_info(spec, backend, request, 7, (256, 384)))
    leading = (1 if spec.paint_mask else 0) + 1 + (1 if spec.preprocessor_radio else 0)
    assert len(updates) == leading + len(spec.controls) + 3 + 1 + 4
    if spec.paint_mask:
        assert isinstance(updates[0], type(gr.skip()))
    assert updates[leading - 1 if not spec.preprocessor_radio else leading - 2] == "a prompt"
    if spec.preprocessor_radio:
        assert updates[leading - 1] == "SoftEdge_HED_safe" == preprocessor
    assert updates[leading + len(spec.controls) + 2] == spec.weights[-1] and "seed 7" in message
