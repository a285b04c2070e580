"""LoRA files merged into the tiny model match diffusers' `load_lora_weights` + `fuse_lora` on the same weights.

Every Linear and Conv2d of the UNet and the text encoder gets random factors (ranks 1-4, alphas != rank, 3x3 convs
with 3x3 `down` factors), written in each file layout users have. Relative error: max|a - b| / max|b|.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cldm.checkpoint import CheckpointError
from cldm.diffusers_names import controlnet_module_names, rename_state_dict, unet_module_names
from cldm.lora import TEXT, UNET, merge_lora, merge_loras, read_lora
from tests.tiny import random_model, to_diffusers

TOL = 1e-5
SCALE = 0.7


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def base():
    model, sd = random_model(seed=0)
    return model, sd, to_diffusers(sd)


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    return {"x": torch.randn(2, 4, 8, 8, generator=gen), "t": torch.tensor([7, 801]),
            "context": torch.randn(2, 77, 32, generator=gen), "ids": torch.randint(0, 49408, (2, 77), generator=gen)}


def targets(model) -> dict[str, nn.Module]:
    """Our path -> module for every Linear/Conv2d of the UNet and the text encoder."""
    return {path: m for path, m in model.named_modules() if path.startswith((UNET, TEXT))
            and isinstance(m, (nn.Linear, nn.Conv2d))}


def random_factors(model, seed: int = 0, kohya_alphas: bool = False) -> dict[str, dict]:
    """Ranks 1-4 and alphas != rank per module; `kohya_alphas`: one alpha for linears and one for convs, as kohya's
    trainer writes them (network_alpha, conv_alpha). diffusers reads a kohya file's per-module alpha for resnets
    and projections but gives attention layers the most common alpha, so only such files compare with it."""
    gen = torch.Generator().manual_seed(seed)
    factors = {}
    for i, (path, module) in enumerate(targets(model).items()):
        w = module.weight
        rank = 1 + i % 4
        alpha = (8.0 if w.ndim == 2 else 2.5) if kohya_alphas else float(rank + 1 + i % 3)
        # Updates of about 30 % of the weight: large enough to matter, small enough to keep the random network
        # well conditioned (so that float rounding stays at rounding level in the outputs).
        down = torch.randn(rank, *w.shape[1:], generator=gen) / w[0].numel() ** 0.5
        up = torch.randn(w.shape[0], rank, *[1] * (w.ndim - 2), generator=gen) * 0.3 * rank ** 0.5 / alpha
        factors[path] = {"down": down, "up": up, "alpha": alpha}
    return factors


def kohya_name(model, path: str, diffusers: bool) -> str:
    if path.startswith(TEXT):
        return "lora_te_" + path[len(TEXT):].replace(".", "_")
    rel = path[len(UNET):]
    if diffusers:
        rel = {o: d for d, o in unet_module_names(model.model.diffusion_model.config).items()}[rel]
    return "lora_unet_" + rel.replace(".", "_")


def peft_name(model, path: str) -> str:
    if path.startswith(TEXT):
        return "text_encoder." + path[len(TEXT):]
    names = {o: d for d, o in unet_module_names(model.model.diffusion_model.config).items()}
    return "unet." + names[path[len(UNET):]]


def write_kohya(model, factors, file, diffusers: bool) -> None:
    sd = {}
    for path, f in factors.items():
        name = kohya_name(model, path, diffusers)
        sd |= {f"{name}.lora_down.weight": f["down"], f"{name}.lora_up.weight": f["up"],
               f"{name}.alpha": torch.tensor(f["alpha"])}
    save_file(sd, str(file)) if file.suffix == ".safetensors" else torch.save(sd, file)


def write_peft(model, factors, file, metadata: str | None) -> None:
    """diffusers/PEFT layout. metadata None: no alphas (alpha = rank); "alpha": lora_alpha + alpha_pattern in the
    header as diffusers writes it; "rslora": the same with use_rslora."""
    sd, config = {}, {"unet": {}, "text_encoder": {}}
    for path, f in factors.items():
        name = peft_name(model, path)
        sd |= {f"{name}.lora_A.weight": f["down"], f"{name}.lora_B.weight": f["up"]}
        component, _, module = name.partition(".")
        config[component][module] = (f["down"].shape[0], f["alpha"])
    header = {"format": "pt"}
    if metadata:
        packed = {}
        for component, modules in config.items():
            (rank, alpha), *_ = modules.values()
            # Patterns as suffixes without `text_model.`: they match the module under both CLIPTextModel layouts.
            suffix = {m: m.removeprefix("text_model.") for m in modules}
            packed |= {f"{component}.r": rank, f"{component}.lora_alpha": alpha,
                       f"{component}.target_modules": sorted(suffix.values()),
                       f"{component}.rank_pattern": {suffix[m]: r for m, (r, _) in modules.items() if r != rank},
                       f"{component}.alpha_pattern": {suffix[m]: a for m, (_, a) in modules.items() if a != alpha},
                       f"{component}.use_rslora": metadata == "rslora"}
        header["lora_adapter_metadata"] = json.dumps(packed)
    save_file(sd, str(file), metadata=header)


def reference(ref, file, scale: float, **kwargs):
    """diffusers' pipeline loader and fuse on copies of the reference UNet and text encoder."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    unet, text_encoder = copy.deepcopy(ref.unet), copy.deepcopy(ref.text_encoder)
    pipe = StableDiffusionPipeline(vae=ref.vae, text_encoder=text_encoder, tokenizer=None, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.load_lora_weights(str(file), **kwargs)
        pipe.fuse_lora(lora_scale=scale)
    return unet, text_encoder


@torch.no_grad()
def outputs(unet, text_encoder, inputs, ours: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if ours:
        return unet(inputs["x"], inputs["t"], inputs["context"]), text_encoder(inputs["ids"])
    return (unet(inputs["x"], inputs["t"], encoder_hidden_states=inputs["context"]).sample,
            text_encoder(inputs["ids"]).last_hidden_state)


def assert_restored(model, sd) -> None:
    state = model.state_dict()
    assert all(torch.equal(state[k], sd[k]) for k in state), "unmerge did not restore the base bit for bit"


def upsampler_free(model, factors):
    """diffusers maps an original-name upsampler that follows a ResBlock directly (`output_blocks.N.1.conv`, a level
    without attention) to `attentions.1`: leave those out of the comparison in that one layout."""
    upsamplers = {UNET + o for d, o in unet_module_names(model.model.diffusion_model.config).items() if "upsamplers" in d}
    return {p: f for p, f in factors.items() if p not in upsamplers}


LAYOUTS = ["kohya_original", "kohya_diffusers", "peft", "peft_alpha", "peft_rslora"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_diffusers_and_unmerges_exactly(base, inputs, tmp_path, layout):
    model, sd, ref = base
    factors = random_factors(model, seed=LAYOUTS.index(layout), kohya_alphas=layout.startswith("kohya"))
    file, kwargs = tmp_path / "lora.safetensors", {}
    if layout == "kohya_original":
        factors = upsampler_free(model, factors)
        write_kohya(model, factors, file, diffusers=False)
        kwargs = {"unet_config": ref.unet.config}  # diffusers maps original block numbers only when given this
    elif layout == "kohya_diffusers":
        write_kohya(model, factors, file, diffusers=True)
    else:
        write_peft(model, factors, file, metadata={"peft": None, "peft_alpha": "alpha", "peft_rslora": "rslora"}[layout])

    lora = read_lora(file, model)
    assert set(lora.pairs) == set(factors) and lora.has_text_encoder
    unet, text = model.model.diffusion_model, model.cond_stage_model.transformer
    base_out = outputs(unet, text, inputs, ours=True)
    expected = outputs(*reference(ref, file, SCALE, **kwargs), inputs, ours=False)

    merged = merge_lora(model, lora, SCALE)
    try:
        got = outputs(unet, text, inputs, ours=True)
    finally:
        merged.unmerge()
    assert_restored(model, sd)
    for name, a, b, b0 in zip(("unet", "text encoder"), got, expected, base_out):
        err = rel_err(a, b)
        print(f"{layout} {name}: rel err {err:.2e} (LoRA changed the output by {rel_err(b0, b):.2f} rel)")
        assert rel_err(b0, b) > 0.05, f"the LoRA barely changes the {name}: the comparison would prove nothing"
        assert err <= TOL

    # The comparison is sensitive to the scale: merging at another scale misses diffusers' output.
    wrong = merge_lora(model, lora, SCALE * 1.1)
    try:
        off = outputs(unet, text, inputs, ours=True)
    finally:
        wrong.unmerge()
    assert min(rel_err(a, b) for a, b in zip(off, expected)) > 1e-3
    assert_restored(model, sd)


def test_kohya_layouts_resolve_to_the_same_modules(base, tmp_path):
    """Original and diffusers module names (upsamplers included) give the same factors for the same modules."""
    model, _, _ = base
    factors = random_factors(model, seed=5)
    write_kohya(model, factors, tmp_path / "original.safetensors", diffusers=False)
    write_kohya(model, factors, tmp_path / "diffusers.safetensors", diffusers=True)
    a, b = read_lora(tmp_path / "original.safetensors", model), read_lora(tmp_path / "diffusers.safetensors", model)
    assert set(a.pairs) == set(b.pairs) == set(factors)
    for path, pair in a.pairs.items():
        assert torch.equal(pair.down, b.pairs[path].down) and torch.equal(pair.up, b.pairs[path].up)
        assert pair.factor == b.pairs[path].factor == factors[path]["alpha"] / factors[path]["down"].shape[0]


def test_pt_file_reads_like_safetensors(base, tmp_path):
    model, _, _ = base
    factors = random_factors(model, seed=6)
    write_kohya(model, factors, tmp_path / "lora.safetensors", diffusers=False)
    write_kohya(model, factors, tmp_path / "lora.pt", diffusers=False)
    a, b = read_lora(tmp_path / "lora.safetensors", model), read_lora(tmp_path / "lora.pt", model)
    assert a.pairs.keys() == b.pairs.keys()
    assert all(torch.equal(a.pairs[k].up, b.pairs[k].up) and a.pairs[k].factor == b.pairs[k].factor for k in a.pairs)


def test_unet_only_file_leaves_text_encoder_alone(base, tmp_path):
    model, sd, _ = base
    factors = {p: f for p, f in random_factors(model, seed=7).items() if p.startswith(UNET)}
    write_kohya(model, factors, tmp_path / "unet.safetensors", diffusers=True)
    lora = read_lora(tmp_path / "unet.safetensors", model)
    assert not lora.has_text_encoder
    merged = merge_lora(model, lora, 1.0)
    try:
        state = model.state_dict()
        assert all(torch.equal(state[k], sd[k]) for k in state if k.startswith(TEXT))
        assert not torch.equal(state[UNET + "input_blocks.1.1.proj_in.weight"], sd[UNET + "input_blocks.1.1.proj_in.weight"])
    finally:
        merged.unmerge()
    assert_restored(model, sd)


def test_merge_matches_the_formula(base, tmp_path):
    """W' = W + scale * alpha/rank * up @ down, for a linear, a 1x1 and a 3x3 conv (3x3 down, 1x1 up)."""
    model, sd, _ = base
    factors = random_factors(model, seed=8)
    write_kohya(model, factors, tmp_path / "lora.safetensors", diffusers=False)
    merged = merge_lora(model, read_lora(tmp_path / "lora.safetensors", model), 0.3)
    try:
        state = model.state_dict()
        for path in ("input_blocks.1.1.transformer_blocks.0.attn2.to_k", "input_blocks.1.1.proj_in",
                     "input_blocks.1.0.in_layers.2"):
            f = factors[UNET + path]
            delta = (f["up"].flatten(1) @ f["down"].flatten(1)).reshape(sd[f"{UNET}{path}.weight"].shape)
            expected = sd[f"{UNET}{path}.weight"] + 0.3 * f["alpha"] / f["down"].shape[0] * delta
            assert torch.allclose(state[f"{UNET}{path}.weight"], expected, rtol=1e-6, atol=1e-7)
    finally:
        merged.unmerge()


def test_stacked_merges_unmerge_in_reverse_order_only(base, tmp_path):
    model, sd, _ = base
    write_kohya(model, random_factors(model, seed=9), tmp_path / "a.safetensors", diffusers=False)
    write_peft(model, random_factors(model, seed=10), tmp_path / "b.safetensors", metadata=None)
    a, b = read_lora(tmp_path / "a.safetensors", model), read_lora(tmp_path / "b.safetensors", model)
    first, second = merge_lora(model, a, 0.5), merge_lora(model, b, 1.0)
    with pytest.raises(RuntimeError, match="reverse order"):
        first.unmerge()
    second.unmerge()
    first.unmerge()
    assert_restored(model, sd)
    with pytest.raises(RuntimeError, match="already undone"):
        first.unmerge()

    both = merge_loras(model, [(a, 0.5), (b, 1.0)])  # one merge of two LoRAs
    assert set(both.modules) == set(a.pairs) | set(b.pairs)
    both.unmerge()
    assert_restored(model, sd)


def test_low_precision_merge_keeps_dtype_and_restores_exactly(tmp_path):
    model, _ = random_model(seed=1)
    model = model.to(torch.bfloat16)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    write_kohya(model, random_factors(model, seed=11), tmp_path / "lora.safetensors", diffusers=True)
    merged = merge_lora(model, read_lora(tmp_path / "lora.safetensors", model), 0.8)
    state = model.state_dict()
    assert all(v.dtype == sd[k].dtype for k, v in state.items())
    assert sum(not torch.equal(v, sd[k]) for k, v in state.items()) > 50
    merged.unmerge()
    assert_restored(model, sd)


def test_reloaded_weight_is_detected(base, tmp_path):
    model, sd, _ = base
    write_kohya(model, random_factors(model, seed=12), tmp_path / "lora.safetensors", diffusers=False)
    merged = merge_lora(model, read_lora(tmp_path / "lora.safetensors", model), 1.0)
    model.load_state_dict(sd)  # someone reloads the base under the merge
    with pytest.raises(RuntimeError, match="changed since"):
        merged.unmerge()
    assert_restored(model, sd)


def test_unmerge_can_reload_the_originals_instead_of_keeping_copies(tmp_path):
    """A bfloat16 model loaded from float32 weights: with `reload` no copy is kept, and unmerge reads the weights
    again (cast as the load cast them) and restores the model bit for bit; reloaded weights that differ from
    those the LoRA was merged into are refused."""
    model, file_state = random_model(seed=1)
    model = model.to(torch.bfloat16)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    write_kohya(model, random_factors(model, seed=14), tmp_path / "lora.safetensors", diffusers=True)
    lora = read_lora(tmp_path / "lora.safetensors", model)
    asked = []
    merged = merge_lora(model, lora, 0.8, reload=lambda keys: asked.extend(keys) or file_state)
    assert not merged._originals  # nothing copied
    assert sum(not torch.equal(v, sd[k]) for k, v in model.state_dict().items()) > 50
    merged.unmerge()
    assert sorted(asked) == sorted(f"{path}.weight" for path in lora.pairs)
    assert_restored(model, sd)

    changed = {k: v + 1 if k == asked[0] else v for k, v in file_state.items()}
    merged = merge_lora(model, lora, 0.8, reload=lambda keys: changed)
    with pytest.raises(RuntimeError, match="reloaded for .* differ"):
        merged.unmerge()


def bad_file(model, tmp_path, name: str, edit) -> Path:
    factors = random_factors(model, seed=13)
    sd = {}
    for path, f in list(factors.items())[:6]:
        key = kohya_name(model, path, diffusers=False)
        sd |= {f"{key}.lora_down.weight": f["down"], f"{key}.lora_up.weight": f["up"], f"{key}.alpha": torch.tensor(4.0)}
    edit(sd)
    file = tmp_path / name
    save_file(sd, str(file))
    return file


@pytest.mark.parametrize("case,edit,message", [
    ("foreign", lambda sd: [sd.clear(), sd.update({"model.weight": torch.ones(2, 2), "lora_x.lora_up.weight": torch.ones(2, 2)})],
     "name no UNet or text-encoder module"),
    ("partly_foreign", lambda sd: sd.update({"lora_unet_input_blocks_1_1_proj_inn.lora_up.weight": torch.ones(2, 2)}),
     "1 keys"),
    ("sdxl", lambda sd: sd.update({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(2, 2)}),
     "SDXL"),
    ("naive_dots", lambda sd: sd.update({"lora_unet_input.blocks.1.1.proj_in.lora_up.weight": torch.ones(2, 2)}),
     "name no UNet"),
    ("missing_up", lambda sd: sd.pop(next(k for k in sd if k.endswith("lora_up.weight"))), "needs both factors"),
    ("wrong_shape", lambda sd: sd.update({k: torch.ones(v.shape[0], 7, *v.shape[2:]) for k, v in list(sd.items())
                                          if k.endswith("lora_down.weight")}), "do not fit"),
    ("not_a_pair", lambda sd: sd.update({k: torch.ones(2, 7) for k in list(sd) if k.endswith("lora_down.weight")}),
     "not a linear or conv LoRA pair"),
    ("dora", lambda sd: sd.update({"lora_unet_conv_in.dora_scale": torch.ones(1)}), "DoRA"),
    ("loha", lambda sd: sd.update({"lora_unet_conv_in.hada_w1_a": torch.ones(1)}), "LoHa"),
])
def test_bad_files_raise_checkpoint_error_naming_the_file(base, tmp_path, case, edit, message):
    model, sd, _ = base
    file = bad_file(model, tmp_path, f"{case}.safetensors", edit)
    with pytest.raises(CheckpointError, match=message) as err:
        read_lora(file, model)
    assert str(file) in str(err.value)
    assert_restored(model, sd)


def test_dora_metadata_and_empty_file_raise(base, tmp_path):
    model, _, _ = base
    file = tmp_path / "dora.safetensors"
    save_file({"unet.conv_in.lora_A.weight": torch.ones(1, 4, 3, 3)}, str(file),
              metadata={"lora_adapter_metadata": json.dumps({"unet.use_dora": True})})
    with pytest.raises(CheckpointError, match="DoRA"):
        read_lora(file, model)
    torch.save({"note": "no tensors"}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="empty.pt"):
        read_lora(tmp_path / "empty.pt", model)


def test_module_names_agree_with_diffusers_conversion(base):
    """Our diffusers <-> original module map renames diffusers' own converted UNet and ControlNet to our keys."""
    model, sd, ref = base
    for net, names, prefix in [(ref.unet, unet_module_names(model.config.unet), UNET),
                               (ref.controlnet, controlnet_module_names(model.config.control), "control_model.")]:
        renamed, unknown = rename_state_dict(net.state_dict(), names)
        ours = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        assert not unknown and renamed.keys() == ours.keys()
        assert all(torch.equal(renamed[k], ours[k]) for k in ours)


@pytest.mark.parametrize("yaml_name,override", [
    ("cldm_v15.yaml", {}),
    ("cldm_tiny.yaml", dict(channel_mult=[1, 2, 2], num_res_blocks=2, attention_resolutions=[2, 4], transformer_depth=2)),
], ids=["sd15", "deeper_variant"])
def test_module_names_for_other_configs(yaml_name, override):
    """Same check on configs the tiny model lacks (attention skipped at level 0, depth 2, three levels, full SD 1.5),
    on the meta device: diffusers' converter must hand each of our tensors to the name our map gives it."""
    import yaml
    from diffusers.loaders import single_file_utils as sfu

    from cldm.control_ldm import ControlLDM
    from cldm.config import parse_config

    original = yaml.safe_load((Path(__file__).parents[1] / "models" / yaml_name).read_text())
    for part in ("unet_config", "control_stage_config"):
        original["model"]["params"][part]["params"].update(override)
    config = parse_config(copy.deepcopy(original))
    with torch.device("meta"):
        checkpoint = ControlLDM(config).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet_config = sfu.create_unet_diffusers_config_from_ldm(original, checkpoint, image_size=8)
        converted = sfu.convert_ldm_unet_checkpoint(checkpoint, unet_config)
    ours = {k[len(UNET):]: v for k, v in checkpoint.items() if k.startswith(UNET)}
    mapped, unknown = rename_state_dict(ours, {o: d for d, o in unet_module_names(config.unet).items()})
    assert not unknown and mapped.keys() == converted.keys()
    assert all(mapped[k] is converted[k] for k in converted)
