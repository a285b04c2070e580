"""ZoeDepth (ZoeD_M12_N): official key layout at full size, strict loading of an official-format file,
parity with controlnet_aux's ZoeDepth / ZoeDetector on identical random weights (a reduced BEiT so that
the test stays fast; both implementations are built with the same reduced sizes), odd image sizes."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from annotator.weights import WeightFileError
from annotator.zoe import ZOED_M12_N, ZoeConfig, ZoeDepth, ZoeDetector, depth_image, network_size, predict_depth
from annotator.zoe.beit import relative_position_index
from tests.annotator_nets import assert_official_layout

FILE_NAME = "ZoeD_M12_N.pt"
KEY_FILE = "annotator_keys_zoe.json"
TINY = ZoeConfig(width=64, depth=4, heads=4, taps=(0, 1, 2, 3), channels=(16, 32, 64, 64), features=32, num_classes=10)
INDEX = "core.core.pretrained.model.blocks.{}.attn.relative_position_index"


def random_state(cfg: ZoeConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official layout, scaled to keep activations O(1); layer scales and the
    relative-position tables far from their zero/1e-5 init so that they matter; buffers as published."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    with torch.device("meta"):
        layout = ZoeDepth(cfg).state_dict()
    for key, value in layout.items():
        if key.endswith("relative_position_index"):
            state[key] = relative_position_index((cfg.trained_grid, cfg.trained_grid))
        elif key.endswith("k_idx"):
            state[key] = torch.arange(value.shape[1]).view(value.shape)
        elif key.endswith("K_minus_1"):
            state[key] = torch.full(value.shape, 63.0)
        elif "norm" in key and key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(value.shape, generator=gen)
        elif "gamma" in key:
            state[key] = 0.5 + 0.1 * torch.randn(value.shape, generator=gen)
        elif key.endswith("relative_position_bias_table") or key.endswith("cls_token"):
            state[key] = 0.5 * torch.randn(value.shape, generator=gen)
        elif value.ndim == 1:
            state[key] = 0.05 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = torch.randn(value.shape, generator=gen) * value[0].numel() ** -0.5
    return state


class Files:
    """The `files` resolver build_network accepts: weight key -> path."""

    def __init__(self, path):
        self.path = path

    def resolve(self, key):
        assert key == "zoe"
        return self.path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The reduced network's random weights saved like the published file: {"model": state dict}."""
    state = random_state(TINY)
    path = tmp_path_factory.mktemp("zoe") / FILE_NAME
    torch.save({"model": state}, path)
    return state, path


@pytest.fixture(scope="module")
def ours(weights):
    return ZoeDetector(files=Files(weights[1]), config=TINY)


@pytest.fixture(scope="module")
def reference(weights):
    """controlnet_aux's ZoeDepth (zoedepth/infer config, MidasCore around MiDaS v3.1 DPT with timm's BEiT and
    MiDaS's arbitrary-grid patches) with the reduced transformer and decoder swapped in, same weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.zoe.zoedepth.models.base_models.midas import MidasCore
        from controlnet_aux.zoe.zoedepth.models.base_models.midas_repo.midas.backbones.beit import _make_beit_backbone
        from controlnet_aux.zoe.zoedepth.models.base_models.midas_repo.midas.dpt_depth import DPTDepthModel
        from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth as AuxZoeDepth
        from controlnet_aux.zoe.zoedepth.utils.config import get_config
        from timm.models.beit import Beit

        with torch.device("meta"):
            midas = DPTDepthModel(path=None, backbone="beitl16_384", non_negative=True, features=TINY.features)
            beit = Beit(img_size=384, patch_size=16, embed_dim=TINY.width, depth=TINY.depth, num_heads=TINY.heads,
                        use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-5, num_classes=TINY.num_classes)
            midas.pretrained = _make_beit_backbone(beit, features=list(TINY.channels), hooks=list(TINY.taps),
                                                   vit_features=TINY.width, use_readout="project")
            for i, c in enumerate(TINY.channels, start=1):
                setattr(midas.scratch, f"layer{i}_rn", nn.Conv2d(c, TINY.features, 3, padding=1, bias=False))
            core = MidasCore(midas, trainable=False, fetch_features=True, freeze_bn=True, img_size=[384, 512],
                             keep_aspect_ratio=True)
            core.output_channels = [TINY.features] * 5
            model = AuxZoeDepth(core, **get_config("zoedepth", "infer"))
    model = model.to_empty(device="cpu").eval()
    state, _ = weights
    # timm >= 0.9 keeps relative_position_index out of the state dict (the patched attention builds its own)
    nn.Module.load_state_dict(model, {k: v for k, v in state.items() if "relative_position_index" not in k}, strict=True)
    for module in model.modules():  # k has no bias: timm's zero buffer, not stored, garbage after to_empty
        if getattr(module, "k_bias", None) is not None:
            module.k_bias.zero_()
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# --- layout and loading ----------------------------------------------------------------------------


def test_full_size_key_layout_matches_official():
    with torch.device("meta"):
        net = ZoeDepth(ZOED_M12_N)
    state = net.state_dict()
    assert_official_layout(state, KEY_FILE)
    assert sum(v.numel() for v in state.values()) == 352_807_107
    ints = {k for k, v in state.items() if v.dtype == torch.int64}
    assert ints == {INDEX.format(i) for i in range(24)} | {"conditional_log_binomial.log_binomial_transform.k_idx"}


def test_full_size_layout_is_controlnet_aux_plus_the_stored_indices():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth as AuxZoeDepth
        from controlnet_aux.zoe.zoedepth.utils.config import get_config

        with torch.device("meta"):
            aux = AuxZoeDepth.build_from_config(get_config("zoedepth", "infer")).state_dict()
            ours = ZoeDepth().state_dict()
    assert [k for k in ours if "relative_position_index" not in k] == list(aux)
    assert all(ours[k].shape == aux[k].shape for k in aux)


def test_stored_index_is_the_deterministic_one():
    """The buffer the published file holds for each block: 577×577, class token first, row-major patches."""
    index = relative_position_index((24, 24))
    assert index.shape == (577, 577) and index.dtype == torch.int64
    assert index[0, 0] == 2211 and index[0, 5] == 2209 and index[5, 0] == 2210
    assert index[1, 1] == 23 * 47 + 23 and index[1, 2] == 23 * 47 + 22 and index[1, 25] == 22 * 47 + 23
    assert index[1:, 1:].max() == 47 * 47 - 1 and index.unique().numel() == 47 * 47 + 3
    from timm.models.beit import gen_relative_position_index

    for grid in ((24, 24), (18, 32), (2, 3)):
        assert torch.equal(relative_position_index(grid), gen_relative_position_index(grid))


def test_official_file_loads_strictly(ours, weights):
    state, _ = weights
    loaded = ours.net.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())


def save(tmp_path, state, wrapper="model"):
    path = tmp_path / FILE_NAME
    torch.save({wrapper: state}, path)
    return Files(path)


def test_files_that_do_not_match_are_refused(weights, tmp_path):
    state, _ = weights
    with pytest.raises(WeightFileError, match="no 'model' entry"):
        ZoeDetector(files=save(tmp_path, state, wrapper="state_dict"), config=TINY)
    missing = {k: v for k, v in state.items() if k != "conv2.bias"}
    with pytest.raises(WeightFileError, match="1 missing key"):
        ZoeDetector(files=save(tmp_path, missing), config=TINY)
    with pytest.raises(WeightFileError, match="1 unexpected key"):
        ZoeDetector(files=save(tmp_path, {**state, "core.core.pretrained.model.norm.weight": torch.ones(64)}), config=TINY)
    wrong = dict(state)
    wrong[INDEX.format(2)] = wrong[INDEX.format(2)].flip(0)
    with pytest.raises(WeightFileError, match="blocks.2.attn.relative_position_index is not"):
        ZoeDetector(files=save(tmp_path, wrong), config=TINY)


def test_a_file_saved_without_the_indices_loads(weights, tmp_path):
    """A re-save from timm >= 0.9 lacks all 24 indices: they are filled in; lacking only some is an error."""
    state, _ = weights
    without = {k: v for k, v in state.items() if "relative_position_index" not in k}
    net = ZoeDetector(files=save(tmp_path, without), config=TINY).net
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    with pytest.raises(WeightFileError, match="missing"):
        ZoeDetector(files=save(tmp_path, {k: v for k, v in state.items() if k != INDEX.format(0)}), config=TINY)


# --- parity with controlnet_aux ------------------------------------------------------------------


@pytest.mark.parametrize("shape, net_size", [((96, 96), (384, 384)), ((96, 176), (288, 512))])
def test_network_output_matches_controlnet_aux(ours, reference, shape, net_size):
    """Metric depth at the network input size; 288×512 is an 18×32 patch grid (bias tables resized)."""
    x = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, expected = ours.net(x), reference(x)["metric_depth"]
    error = relative_error(out, expected)
    print(f"ZoeDepth metric depth {shape} -> {net_size}: max relative error {error:.3g}")
    assert out.shape == expected.shape == (1, 1, *net_size)
    assert error <= 1e-5
    assert expected.std() > 1e-3 * expected.abs().mean()  # not a constant map


def test_parity_can_fail(ours, reference):
    """The attractor strength in force is 300 (the configured 1000 never reaches the distance function),
    and the bias tables matter: changing either breaks the match."""
    x = torch.rand(1, 3, 96, 176, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)["metric_depth"]
        attractor = ours.net.attractors[0]
        attractor.alpha = 1000.0
        try:
            assert relative_error(ours.net(x), expected) > 1e-3
        finally:
            attractor.alpha = 300.0
        table = ours.net.core.core.pretrained.model.blocks[1].attn.relative_position_bias_table
        kept = table.clone()
        table[1000] += 1.0
        try:
            assert relative_error(ours.net(x), expected) > 1e-5
        finally:
            table.copy_(kept)


@pytest.mark.parametrize("shape", [(64, 64), (64, 128)])
def test_depth_map_matches_controlnet_aux_zoe_detector(ours, reference, shape):
    """`infer` (reflect padding, flip averaging) and the 2 %/85 % percentile map. aux's detector is fed at
    its own size (sides are multiples of 64 and detect = image resolution, so its resizes are identities)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.zoe import ZoeDetector as AuxZoeDetector

    image = np.random.default_rng(2).integers(0, 256, shape + (3,), dtype=np.uint8)
    image[: shape[0] // 2] //= 3
    depth = predict_depth(ours.net, image)
    with torch.no_grad():
        expected = reference.infer(torch.from_numpy(image).float().permute(2, 0, 1)[None] / 255.0)[0, 0].numpy()
    error = float(np.abs(depth - expected).max() / np.abs(expected).max())
    out = np.stack([depth_image(depth)] * 3, axis=2)  # what ZoeDetector.__call__ returns
    expected_map = AuxZoeDetector(reference)(image, detect_resolution=min(shape), image_resolution=min(shape))
    print(f"ZoeDepth infer {shape}: max relative error {error:.3g}; "
          f"map pixels differing {(out != expected_map).sum()} of {out.size}")
    assert depth.shape == shape and error <= 1e-5
    assert out.shape == shape + (3,) and out.dtype == np.uint8
    assert np.array_equal(out, expected_map)
    assert len(np.unique(out)) > 50


# --- sizes and the depth image ---------------------------------------------------------------------


def test_network_size_follows_the_minimal_policy():
    assert network_size(608, 608) == (512, 512)  # 512×512 detect, padded by 48 per side
    assert network_size(608, 816) == (384, 512)  # 512×704 detect
    assert network_size(96, 116) == (384, 448)  # 464/32 = 14.5 rounds half to even
    assert network_size(33, 1134) == (32, 512)  # 17×1000 padded: the height would round to 0
    assert network_size(4366, 96) == (384, 32)  # 4096×64 padded


@pytest.mark.parametrize("shape", [(17, 1000), (4096, 64), (67, 93)])
def test_odd_sizes_keep_the_image_size(ours, shape):
    image = np.random.default_rng(3).integers(0, 256, shape + (3,), dtype=np.uint8)
    out = ours(image)
    assert out.shape == shape + (3,) and out.dtype == np.uint8
    assert np.array_equal(out, np.stack([depth_image(predict_depth(ours.net, image))] * 3, axis=2))


def test_depth_image_percentile_window():
    depth = np.linspace(1.0, 5.0, 101, dtype=np.float32).reshape(1, 101)  # p2 = 1.08, p85 = 4.4
    image = depth_image(depth)
    vmin, vmax = np.percentile(depth, 2), np.percentile(depth, 85)
    expected = ((1.0 - (depth - vmin) / (vmax - vmin)) * 255.0).clip(0, 255).astype(np.uint8)
    assert np.array_equal(image, expected)
    assert (image[0, :3] == 255).all() and (image[0, 85:] == 0).all() and image.dtype == np.uint8
    constant = depth_image(np.full((4, 4), 2.0, np.float32))  # p85 = p2: the original divides by zero
    assert (constant == 255).all()
