import os
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

import tool_add_control
import train
from cldm.dataset import Fill50KDataset, make_fill
from cldm.model import create_model, load_control, load_full_checkpoint
from cldm.training import (
    ControlNetTraining, PromptDropper, TrainingConfig, export_control, image_grid, text_image,
)
from conftest import ROOT
from test_tools import TINY, sd_checkpoint

LOCKED = ("model.diffusion_model.input_blocks.", "model.diffusion_model.middle_block.",
          "model.diffusion_model.time_embed.", "first_stage_model.", "cond_stage_model.")
DECODER = ("model.diffusion_model.output_blocks.", "model.diffusion_model.out.")
ZERO = ("control_model.zero_convs.", "control_model.middle_block_out.")


@pytest.fixture(scope="module")
def init_file(tmp_path_factory):
    """tool_add_control's output for a tiny "pretrained" SD checkpoint."""
    folder = tmp_path_factory.mktemp("init")
    sd = folder / "sd.safetensors"
    save_file(sd_checkpoint(0), sd)
    out = folder / "ini.safetensors"
    assert tool_add_control.main([str(sd), str(out), "--config", str(TINY)]) == 0
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_fill(tmp_path_factory.mktemp("data") / "fill", n=4, size=64, seed=0)


def initial_model(init_file):
    model = create_model(TINY)
    load_full_checkpoint(model, init_file)
    return model


def first_batch(data_dir, n=2):
    return next(iter(DataLoader(Fill50KDataset(data_dir), batch_size=n, shuffle=False)))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, after, prefixes):
    keys = [k for k in before if k.startswith(prefixes)]
    assert keys, prefixes
    return {k for k in keys if not torch.equal(before[k], after[k])}


def test_step_zero_control_leaves_sd_unchanged(init_file):
    model = initial_model(init_file)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    context = model.get_learned_conditioning(["a red circle", "b"])
    t = torch.tensor([10, 900])
    with torch.no_grad():
        plain = model.apply_model(x, t, {"c_concat": None, "c_crossattn": [context]})
        assert plain.abs().sum() > 0
        for hint in (torch.rand(2, 3, 64, 64), torch.ones(2, 3, 64, 64), torch.zeros(2, 3, 64, 64)):
            controlled = model.apply_model(x, t, {"c_concat": [hint], "c_crossattn": [context]})
            assert torch.equal(controlled, plain)


def fit(module, data_dir, steps, tmp_path):
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(Fill50KDataset(data_dir), batch_size=2, shuffle=True))
    return trainer


def test_lightning_training_with_sd_locked(init_file, data_dir, tmp_path):
    model = initial_model(init_file)
    before = snapshot(model)
    pl.seed_everything(0)
    trainer = fit(ControlNetTraining(model, TrainingConfig(learning_rate=1e-3)), data_dir, 3, tmp_path)
    assert trainer.global_step == 3
    after = snapshot(model)
    assert not changed(before, after, LOCKED)
    assert not changed(before, after, DECODER)
    zero = [k for k in after if k.startswith(ZERO)]
    assert all(after[k].count_nonzero() for k in zero)
    assert changed(before, after, ("control_model.input_blocks.",))
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("control_model."))
    assert model.first_stage_model.training is False and model.cond_stage_model.training is False


def test_unlocked_sd_trains_the_decoder_only(init_file, data_dir):
    model = initial_model(init_file)
    module = ControlNetTraining(model, TrainingConfig(learning_rate=1e-3, sd_locked=False))
    optimiser = module.configure_optimizers()
    before = snapshot(model)
    batch = first_batch(data_dir)
    torch.manual_seed(0)
    module.train()
    for _ in range(3):
        module.compute_loss(batch).backward()
        optimiser.step()
        optimiser.zero_grad()
    after = snapshot(model)
    assert not changed(before, after, LOCKED)
    decoder = [k for k in before if k.startswith(DECODER)]
    assert changed(before, after, DECODER) == set(decoder)
    assert all(after[k].count_nonzero() for k in after if k.startswith(ZERO))


def test_gradients_reach_the_whole_controlnet_as_zero_layers_become_non_zero(init_file, data_dir):
    model = initial_model(init_file)
    module = ControlNetTraining(model, TrainingConfig(learning_rate=1e-3))
    optimiser = module.configure_optimizers()
    batch = first_batch(data_dir)
    torch.manual_seed(0)
    with_grad = []
    for _ in range(3):
        module.compute_loss(batch).backward()
        with_grad.append({n for n, p in model.control_model.named_parameters() if p.grad is not None and p.grad.count_nonzero()})
        assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("control_model."))
        optimiser.step()
        optimiser.zero_grad()
    names = {n for n, _ in model.control_model.named_parameters()}
    zero_convs = {n for n in names if n.startswith(("zero_convs.", "middle_block_out."))}
    last_hint = max(int(n.split(".")[1]) for n in names if n.startswith("input_hint_block."))
    early_hint = {n for n in names if n.startswith("input_hint_block.") and int(n.split(".")[1]) < last_hint}
    # Step 0: only the zero convolutions (FAQ: dL/dw = x, but dL/dx = 0 while w = 0); step 1: all but the hint
    # encoder below its zero-initialised last conv; step 2: everything.
    assert with_grad[0] == zero_convs
    assert with_grad[1] == names - early_hint
    assert with_grad[2] == names


def test_loss_goes_down_on_a_fixed_batch(init_file, data_dir):
    model = initial_model(init_file)
    module = ControlNetTraining(model, TrainingConfig(learning_rate=2e-3)).eval()
    optimiser = module.configure_optimizers()
    batch = first_batch(data_dir)
    t = torch.tensor([300, 700])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def loss():
        torch.manual_seed(0)  # the same VAE posterior sample every time
        return module.compute_loss(batch, t=t, noise=noise)

    losses = []
    for _ in range(8):
        value = loss()
        losses.append(value.item())
        value.backward()
        optimiser.step()
        optimiser.zero_grad()
    with torch.no_grad():
        losses.append(loss().item())
    assert loss().item() == losses[-1]  # deterministic
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses


def test_prompt_dropping():
    prompts = [f"prompt {i}" for i in range(1000)]
    dropped = PromptDropper(0.5, seed=3)(prompts)
    fraction = sum(p == "" for p in dropped) / len(prompts)
    assert 0.45 < fraction < 0.55
    assert all(d in ("", p) for d, p in zip(dropped, prompts))
    assert PromptDropper(0.5, seed=3)(prompts) == dropped
    assert PromptDropper(0.5, seed=4)(prompts) != dropped
    assert sum(p == "" for p in PromptDropper(0.1, seed=0)(prompts)) in range(70, 131)
    assert PromptDropper(0.0)(prompts) == prompts
    assert set(PromptDropper(1.0)(prompts)) == {""}
    with pytest.raises(ValueError, match="probability"):
        PromptDropper(1.5)
    with pytest.raises(ValueError, match="drop_prompt"):
        TrainingConfig(drop_prompt=-0.1)


def test_training_step_drops_prompts_only_in_training_mode(init_file, data_dir):
    module = ControlNetTraining(initial_model(init_file), TrainingConfig(drop_prompt=1.0))
    batch = first_batch(data_dir)
    empty = module.model.get_unconditional_conditioning(2)
    module.train()
    assert torch.equal(module.get_input(batch, drop_prompts=True)[1]["c_crossattn"][0], empty)
    module.eval()
    assert not torch.equal(module.get_input(batch)[1]["c_crossattn"][0], empty)


def test_export_loads_with_the_app_loader(init_file, tmp_path):
    model = initial_model(init_file)
    with torch.no_grad():
        for p in model.control_model.parameters():
            p.add_(torch.rand_like(p))
    out = export_control(model, tmp_path / "control.safetensors")
    keys = load_file(out)
    assert keys and all(k.startswith("control_model.") for k in keys)
    other = create_model(TINY)
    load_control(other, out)
    for (name, a), b in zip(model.control_model.state_dict().items(), other.control_model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(FileExistsError):
        export_control(model, out)


def test_panels_helpers():
    image = text_image("red circle with blue background", 64, 48)
    assert image.shape == (3, 48, 64) and image.min() < -0.5 and image.max() == 1
    assert torch.equal(text_image("", 64, 48), torch.ones(3, 48, 64))
    grid = image_grid(torch.stack([image] * 5), columns=4)
    assert grid.shape == (2 * 50 + 2, 4 * 66 + 2, 3) and grid.dtype == np.uint8


def test_train_cli_end_to_end(init_file, data_dir, tmp_path, capsys):
    logs, out = tmp_path / "logs", tmp_path / "fill_control.safetensors"
    common = ["--config", TINY, "--data", data_dir, "--batch-size", 2, "--lr", 1e-3, "--log-dir", logs,
              "--log-every", 2, "--log-ddim-steps", 2, "--drop-prompt", 0.5]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "train.py", *map(str, common), "--resume", str(init_file), "--max-steps", "2",
                          "--export", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    images = sorted(p.name for p in (logs / "image_log" / "train").iterdir())
    keys = ("conditioning", "control", "reconstruction", "samples_cfg_scale_9.00")
    assert images == [f"{k}_gs-000001_e-000000_b-000000.png" for k in keys]  # after the first optimiser step
    exported = load_file(out)
    assert all(exported[k].count_nonzero() for k in exported if k.startswith(ZERO))
    load_control(create_model(TINY), out)

    # The same CLI in-process: continue from the Lightning checkpoint (the step counter goes on from 2) ...
    common = [str(a) for a in common]
    ckpt = next((logs / "version_0" / "checkpoints").glob("*.ckpt"))
    assert train.is_training_checkpoint(ckpt)
    # An original-layout training .ckpt (ControlLDM keys at top level) is resumed from as weights.
    original = tmp_path / "original_run.ckpt"
    torch.save({"pytorch-lightning_version": "1.5.0", "global_step": 7, "state_dict": load_file(init_file)}, original)
    assert not train.is_training_checkpoint(original) and not train.is_training_checkpoint(init_file)
    load_full_checkpoint(create_model(TINY), original)
    assert train.main([*common, "--resume", str(ckpt), "--max-steps", "3"]) == 0
    assert next((logs / "version_1" / "checkpoints").glob("*.ckpt")).name.endswith("step=3.ckpt")
    # ... and clear errors before any training.
    capsys.readouterr()
    assert train.main([*common, "--resume", str(init_file), "--max-steps", "1", "--export", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert train.main(["--config", str(TINY), "--data", str(tmp_path / "nowhere"), "--resume", str(init_file)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train.main([*common, "--resume", str(data_dir / "prompt.json")]) == 2
    assert "unsupported file type" in capsys.readouterr().err
