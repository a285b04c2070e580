import pytest
import torch
from safetensors.torch import load_file, save_file

import tool_add_control
import tool_transfer_control
from cldm.model import create_model, load_full_checkpoint
from cldm.tools import ToolError, add_control, transfer_control, unet_twin, zero_initialised_keys
from tests.tiny import POSITION_IDS, TINY_YAML as TINY, random_model


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_unet_twin():
    assert unet_twin("control_model.input_blocks.1.0.in_layers.2.weight") == "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    assert unet_twin("model.diffusion_model.out.0.bias") == "model.diffusion_model.out.0.bias"
    assert unet_twin("first_stage_model.decoder.conv_in.weight") == "first_stage_model.decoder.conv_in.weight"


# --- add_control on plain state dicts --------------------------------------------------------------------------

FRESH = {
    "betas": t(0.1, 0.2),
    "model.diffusion_model.a.weight": t(0, 0),
    "model.diffusion_model.b.weight": t(0),
    "control_model.a.weight": t(9, 9),
    "control_model.input_hint_block.0.weight": t(5),
    "control_model.input_hint_block.2.weight": t(0),
    "control_model.zero_convs.0.0.weight": t(0),
    "control_model.middle_block_out.0.bias": t(0),
    "first_stage_model.x": t(0),
    POSITION_IDS: torch.arange(3),
}
SD = {
    "model.diffusion_model.a.weight": t(1, 2),
    "model.diffusion_model.b.weight": t(3),
    "first_stage_model.x": t(4),
    "model_ema.decay": t(0.9999),  # extra SD keys are ignored
}


def test_add_control_copies_twins_and_keeps_new_keys():
    result = add_control(SD, FRESH)
    out = result.state_dict
    assert list(out) == list(FRESH)
    assert torch.equal(out["control_model.a.weight"], SD["model.diffusion_model.a.weight"])
    assert torch.equal(out["model.diffusion_model.a.weight"], SD["model.diffusion_model.a.weight"])
    assert torch.equal(out["first_stage_model.x"], SD["first_stage_model.x"])
    assert torch.equal(out["control_model.input_hint_block.0.weight"], t(5))
    assert sorted(result.new) == sorted(k for k in FRESH if k.startswith("control_model.") and k != "control_model.a.weight")
    assert sorted(result.defaulted) == ["betas", POSITION_IDS]
    assert torch.equal(out["betas"], FRESH["betas"])
    assert sorted(zero_initialised_keys(out)) == [
        "control_model.input_hint_block.2.weight", "control_model.middle_block_out.0.bias", "control_model.zero_convs.0.0.weight",
    ]


def test_add_control_reports_missing_and_misshapen_keys():
    lacking = {k: v for k, v in SD.items() if k != "model.diffusion_model.b.weight"}
    with pytest.raises(ToolError, match=r"lacks 1 key.*model\.diffusion_model\.b\.weight"):
        add_control(lacking, FRESH)
    with pytest.raises(ToolError, match=r"wrong shape.*model\.diffusion_model\.a\.weight \(3,\) \(expected \(2,\)\)"):
        add_control({**SD, "model.diffusion_model.a.weight": t(1, 2, 3)}, FRESH)


def test_add_control_casts_to_the_model_dtype():
    half = {k: v.half() for k, v in SD.items()}
    out = add_control(half, FRESH).state_dict
    assert out["control_model.a.weight"].dtype == torch.float32
    assert torch.equal(out["control_model.a.weight"], t(1, 2))


# --- transfer_control on plain state dicts -----------------------------------------------------------------------

SD15 = {"model.diffusion_model.a.weight": t(1, 2), "first_stage_model.x": t(0), "betas": t(0.1)}
BASE = {"model.diffusion_model.a.weight": t(1.5, 4), "first_stage_model.x": t(7), "cond_stage_model.y": t(8), "betas": t(0.1)}
CONTROL_FULL = {
    "model.diffusion_model.a.weight": t(1, 2),
    "control_model.a.weight": t(10, 20),
    "control_model.zero_convs.0.0.weight": t(0.5),
    "first_stage_model.x": t(0),
    "cond_stage_model.y": t(0),
    "betas": t(0.1),
}


def test_transfer_rule_on_a_full_file():
    out = transfer_control(SD15, CONTROL_FULL, BASE)
    assert list(out) == list(CONTROL_FULL)
    assert torch.equal(out["model.diffusion_model.a.weight"], t(1.5, 4))
    assert torch.equal(out["control_model.a.weight"], t(10.5, 22))
    assert torch.equal(out["control_model.zero_convs.0.0.weight"], t(0.5))
    assert torch.equal(out["first_stage_model.x"], t(7))
    assert torch.equal(out["cond_stage_model.y"], t(8))
    assert torch.equal(out["betas"], t(0.1))


def test_transfer_of_a_control_only_file_stays_control_only_and_keeps_dtype():
    control = {k: v.half() for k, v in CONTROL_FULL.items() if k.startswith("control_model.")}
    out = transfer_control(SD15, control, BASE)
    assert list(out) == list(control)
    assert out["control_model.a.weight"].dtype == torch.float16
    assert torch.equal(out["control_model.a.weight"], t(10.5, 22).half())


def test_transfer_errors():
    with pytest.raises(ToolError, match=r"new base lacks 1 VAE/text-encoder key.*cond_stage_model\.y"):
        transfer_control(SD15, CONTROL_FULL, {k: v for k, v in BASE.items() if k != "cond_stage_model.y"})
    with pytest.raises(ToolError, match=r"SD 1\.5 file lacks .*model\.diffusion_model\.a\.weight"):
        transfer_control({}, CONTROL_FULL, BASE)
    with pytest.raises(ToolError, match=r"differ in shape"):
        transfer_control(SD15, CONTROL_FULL, {**BASE, "model.diffusion_model.a.weight": t(1, 2, 3)})


# --- the tools on files, with the tiny architecture -----------------------------------------------------------

def sd_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    """A tiny "pretrained" SD 1.5 file's state dict (official layout, no ControlNet, every weight non-zero)."""
    return {k: v for k, v in random_model(seed)[1].items() if not k.startswith("control_model.")}


def test_add_control_file_round_trip(tmp_path, capsys):
    sd = sd_checkpoint(0)
    ckpt = tmp_path / "sd.ckpt"
    torch.save({"state_dict": sd, "global_step": 1}, ckpt)  # the usual LDM wrapper
    out = tmp_path / "ini.safetensors"
    assert tool_add_control.main([str(ckpt), str(out), "--config", str(TINY)]) == 0
    printed = capsys.readouterr().out
    result = load_file(out)
    fresh = create_model(TINY).state_dict()
    assert set(result) == set(fresh)
    control = [k for k in result if k.startswith("control_model.")]
    twins = [k for k in control if unet_twin(k) in sd]
    assert twins and len(twins) < len(control)
    for key in twins:
        assert torch.equal(result[key], sd[unet_twin(key)]), key
    for key in sd.keys() - {POSITION_IDS}:  # newer CLIP code has no position_ids buffer
        assert torch.equal(result[key], sd[key]), key
    new = sorted(set(control) - set(twins))
    assert new == sorted(line.split(": ", 1)[1] for line in printed.splitlines() if line.startswith("These weights are newly added"))
    zero = zero_initialised_keys(result)
    assert len(zero) == 2 * (len([k for k in result if k.startswith("control_model.zero_convs.")]) // 2 + 1 + 1)
    assert all(not result[k].count_nonzero() for k in zero)
    hint = [k for k in new if k.startswith("control_model.input_hint_block.") and k not in zero]
    assert hint and all(result[k].count_nonzero() for k in hint if k.endswith("weight"))
    load_full_checkpoint(create_model(TINY), out)  # the apps' loader accepts it as a full file
    # Refuses to overwrite; the safetensors input works the same.
    sft = tmp_path / "sd.safetensors"
    save_file(sd, sft)
    assert tool_add_control.main([str(sft), str(out), "--config", str(TINY)]) == 2
    assert "already exists" in capsys.readouterr().err
    out2 = tmp_path / "ini2.safetensors"
    assert tool_add_control.main([str(sft), str(out2), "--config", str(TINY)]) == 0
    assert all(torch.equal(load_file(out2)[k], result[k]) for k in twins)


def test_add_control_file_errors(tmp_path, capsys):
    args = ["--config", str(TINY)]
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint")
    assert tool_add_control.main([str(junk), str(tmp_path / "a.safetensors"), *args]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    sd = sd_checkpoint(0)
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}, partial)
    assert tool_add_control.main([str(partial), str(tmp_path / "b.safetensors"), *args]) == 2
    err = capsys.readouterr().err
    assert "lacks" in err and "first_stage_model." in err
    assert tool_add_control.main([str(partial), str(tmp_path / "c.ckpt"), *args]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert not any(tmp_path.glob("[abc].*"))


def test_transfer_control_files(tmp_path, capsys):
    sd15, base = sd_checkpoint(0), sd_checkpoint(1)
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("sd15", "base", "full", "control")}
    save_file(sd15, paths["sd15"])
    save_file(base, paths["base"])
    ini = tmp_path / "ini.safetensors"
    assert tool_add_control.main([str(paths["sd15"]), str(ini), "--config", str(TINY)]) == 0
    full = load_file(ini)
    torch.manual_seed(2)
    full = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in full.items()}  # "trained"
    save_file(full, paths["full"])
    control_only = {k: v for k, v in full.items() if k.startswith("control_model.")}
    save_file(control_only, paths["control"])

    for name, source in (("full", full), ("control", control_only)):
        out = tmp_path / f"out_{name}.safetensors"
        argv = ["--sd15", str(paths["sd15"]), "--control", str(paths[name]), "--base", str(paths["base"]), "--out", str(out)]
        assert tool_transfer_control.main(argv) == 0
        result = load_file(out)
        assert set(result) == set(source)
        for key, value in source.items():
            twin = unet_twin(key)
            if key.startswith(("first_stage_model.", "cond_stage_model.")):
                expected = base[key]
            elif "." in key and twin in base:
                expected = value + (base[twin] - sd15[twin])
            else:
                expected = value
            assert torch.equal(result[key], expected), key
        assert tool_transfer_control.main(argv) == 2
        assert "already exists" in capsys.readouterr().err
    hint = [k for k in control_only if k.startswith("control_model.input_hint_block.")]
    assert hint and all(torch.equal(load_file(tmp_path / "out_control.safetensors")[k], full[k]) for k in hint)
