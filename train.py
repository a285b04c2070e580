"""Train a ControlNet on a locked Stable Diffusion 1.5 (the original `tutorial_train.py`, with options).

    python tool_add_control.py v1-5-pruned.ckpt models/control_sd15_ini.safetensors
    python -m cldm.dataset make-fill --out training/fill --n 1000 --size 512   # or unzip Fill50K
    python train.py --resume models/control_sd15_ini.safetensors --data training/fill \
        --export models/control_sd15_fill.safetensors

`--resume` takes either the file written by tool_add_control (full ControlLDM weights) or a Lightning
checkpoint written by an earlier run (weights, optimiser state and step counter are restored).
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import torch

TRAINING_PREFIX = "model.control_model."  # ControlNetTraining.model is the ControlLDM
DEFAULT_CONFIG = Path(__file__).resolve().parent / "models" / "cldm_v15.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="ControlLDM yaml (default: models/cldm_v15.yaml)")
    p.add_argument("--resume", required=True, help="tool_add_control output, or a Lightning .ckpt to continue")
    p.add_argument("--data", required=True, help="data folder in the Fill50K layout (prompt.json, source/, target/)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--sd-locked", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the SD UNet decoder frozen (default); --no-sd-locked also trains output_blocks and out")
    p.add_argument("--only-mid-control", action="store_true", help="use only the middle-block control residual")
    p.add_argument("--drop-prompt", type=float, default=0.0,
                   help="probability of training on the empty prompt (the paper uses 0.5; default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=300, help="image-logging frequency in batches (default: %(default)s)")
    p.add_argument("--log-ddim-steps", type=int, default=50, help="DDIM steps of the logged CFG-9 samples")
    p.add_argument("--log-dir", default="lightning_logs", help="logs, image logs and Lightning checkpoints")
    p.add_argument("--max-steps", type=int, default=-1, help="optimiser steps; -1 runs until stopped")
    p.add_argument("--accumulate-grad-batches", type=int, default=1)
    p.add_argument("--precision", default="32", help="Lightning precision: 32, 16-mixed, bf16-mixed, ...")
    p.add_argument("--devices", default="auto", help="Lightning devices (e.g. 1, 2, auto)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--export", help="write the trained ControlNet here as a control-only .safetensors file")
    args = p.parse_args(argv)
    for name in ("batch_size", "log_every", "log_ddim_steps", "accumulate_grad_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_steps < -1 or args.max_steps == 0:
        p.error("--max-steps must be positive, or -1 for no limit")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    return args


def is_training_checkpoint(path: Path) -> bool:
    """A Lightning checkpoint written by this trainer (its state dict holds `model.control_model.*`), read with
    weights_only=True. Anything else (tool_add_control output, an original run's .ckpt) is loaded as weights."""
    if path.suffix.lower() != ".ckpt" or not zipfile.is_zipfile(path):
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not loadable as plain tensors: left to the weight loader, which says why
        return False
    state = obj.get("state_dict") if isinstance(obj, dict) and "pytorch-lightning_version" in obj else None
    return isinstance(state, dict) and any(k.startswith(TRAINING_PREFIX) for k in state)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from cldm.dataset import Fill50KDataset
    from cldm.model import create_model, load_full_checkpoint
    from cldm.tools import refuse_existing
    from cldm.training import ControlNetTraining, ImageLogger, TrainingConfig, export_control

    try:
        if args.export:
            refuse_existing(args.export)
        resume = Path(args.resume)
        if not resume.is_file():
            raise FileNotFoundError(f"--resume {resume}: no such file")
        dataset = Fill50KDataset(args.data)
        pl.seed_everything(args.seed, workers=True)
        model = create_model(args.config)
        continue_from = resume if is_training_checkpoint(resume) else None
        if continue_from is None:
            load_full_checkpoint(model, resume)
        config = TrainingConfig(args.lr, args.sd_locked, args.only_mid_control, args.drop_prompt, args.seed)
    except (ValueError, FileExistsError, FileNotFoundError) as e:  # CheckpointError, DatasetError, ConfigError
        print(f"error: {e}", file=sys.stderr)
        return 2

    module = ControlNetTraining(model, config)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        precision=args.precision,
        max_steps=args.max_steps,
        max_epochs=-1 if args.max_steps == -1 else None,
        accumulate_grad_batches=args.accumulate_grad_batches,
        logger=CSVLogger(args.log_dir, name=""),
        callbacks=[ImageLogger(args.log_dir, frequency=args.log_every, ddim_steps=args.log_ddim_steps)],
        log_every_n_steps=1,
    )
    trainer.fit(module, loader, ckpt_path=continue_from, weights_only=True)
    if args.export and trainer.is_global_zero:
        export_control(model, args.export)
        print(f"exported the ControlNet to {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
