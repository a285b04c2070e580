"""State-dict layout of the full-size model (meta device) against the official key list; config parsing."""
import json

import pytest
import torch
import yaml

from cldm.config import ConfigError, load_config, parse_config
from cldm.model import build_model
from tests.tiny import KEYS_JSON, POSITION_IDS, TINY_YAML, V15_YAML, official_keys, random_model

PARTS = {  # prefix -> parameter count of the official checkpoint (UNet 859.52 M, ControlNet 361.28 M, VAE 83.65 M, CLIP 123.06 M)
    "model.diffusion_model.": 859_520_964,
    "control_model.": 361_279_120,
    "first_stage_model.": 83_653_863,
    "cond_stage_model.transformer.text_model.": 123_060_480,
}


@pytest.fixture(scope="module")
def meta_model():
    with torch.device("meta"):
        return build_model(load_config(V15_YAML))


def test_keys_and_shapes_match_official(meta_model):
    ref = official_keys()
    sd = meta_model.state_dict()
    expected = [k for k in ref if k != POSITION_IDS]  # position_ids is accepted on load, not saved
    assert list(sd) == expected  # same names, same order
    assert {k: list(v.shape) for k, v in sd.items()} == {k: ref[k]["shape"] for k in expected}
    assert all(v.dtype == torch.float32 for v in sd.values())


def test_parameter_counts(meta_model):
    counts = {p: 0 for p in PARTS}
    for name, param in meta_model.named_parameters():
        counts[next(p for p in PARTS if name.startswith(p))] += param.numel()
    assert counts == PARTS
    numel = json.loads(KEYS_JSON.read_text())["numel_per_prefix"]
    assert numel["cond_stage_model.transformer.text_model."] == PARTS["cond_stage_model.transformer.text_model."] + 77
    assert round(counts["model.diffusion_model."] / 1e6, 2) == 859.52
    assert len(meta_model.control_scales) == 13


def test_loads_with_and_without_position_ids():
    model, sd = random_model(seed=1)
    model.load_state_dict(sd, strict=True)
    without = {k: v for k, v in sd.items() if k != POSITION_IDS}
    model.load_state_dict(without, strict=True)
    sd[POSITION_IDS] = torch.arange(77)[None].flip(1)
    with pytest.raises(ValueError, match="position_ids"):
        model.load_state_dict(sd, strict=True)


def test_v15_config_values():
    cfg = load_config(V15_YAML)
    assert (cfg.linear_start, cfg.linear_end, cfg.timesteps, cfg.scale_factor) == (0.00085, 0.012, 1000, 0.18215)
    assert (cfg.control_key, cfg.first_stage_key, cfg.cond_stage_key, cfg.only_mid_control) == ("hint", "jpg", "txt", False)
    assert cfg.unet.channel_mult == (1, 2, 4, 4) and cfg.control.hint_channels == 3 and cfg.control.num_outputs == 13
    assert cfg.cond_stage.hidden_size == 768 and cfg.first_stage.downscale == 8


def _tiny_yaml() -> dict:
    return yaml.safe_load(TINY_YAML.read_text())


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["model"]["params"].update(bogus=1), "unknown field"),
    (lambda d: d["model"]["params"]["unet_config"]["params"].pop("model_channels"), "missing field"),
    (lambda d: d["model"]["params"]["control_stage_config"].update(target="x.Y"), "target"),
    (lambda d: d["model"]["params"]["unet_config"]["params"].update(num_res_blocks="two"), "expected int"),
    (lambda d: d["model"]["params"]["control_stage_config"]["params"].update(model_channels=64), "mirror"),
    (lambda d: d["model"]["params"]["cond_stage_config"]["params"].update(hidden_size=64), "context_dim"),
    (lambda d: d["model"]["params"]["first_stage_config"]["params"]["ddconfig"].update(double_z=False), "double_z"),
    (lambda d: d["model"]["params"].pop("unet_config"), "missing unet_config"),
    (lambda d: d["model"]["params"]["unet_config"]["params"].update(num_heads=3), "divisible"),
])
def test_bad_configs_raise(edit, message):
    data = _tiny_yaml()
    edit(data)
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.yaml")
