"""Cost of ControlNet training vs plain SD fine-tuning, per training step, on this machine.

    python bench/training.py                                  # full SD 1.5 size, batch 1 at 256 px, CPU
    python bench/training.py --config models/cldm_tiny.yaml --size 64   # quick check of the script itself

Two modes, each in its own subprocess (so the peak resident memory of one does not hide the other's):
* controlnet: the recipe of `train.py` — SD locked, AdamW over the ControlNet only;
* sd:         plain fine-tuning of the same UNet — every UNet parameter trainable, no ControlNet
              (its weights are released), gradients through the whole UNet.
Both include the VAE encoding and the text encoding of each batch. Weights are random (the cost does not
depend on their values). Peak memory is the process's peak RSS over the timed steps (the high-water mark is
reset after the model is built; it includes the weights, gradients and optimiser state).
The ControlNet paper (Zhang et al. 2023) reports, on an A100 and SD 1.5, +34 % time and +23 % GPU
memory per iteration for ControlNet training compared with fine-tuning SD itself.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"time": 0.34, "memory": 0.23}
MODES = ("sd", "controlnet")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False when not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(mode: str, args: argparse.Namespace) -> dict:
    import torch

    from cldm.model import create_model
    from cldm.training import ControlNetTraining, TrainingConfig, freeze_all_but, q_sample

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.config)
    module = ControlNetTraining(model, TrainingConfig(learning_rate=1e-5))  # freezes everything but the ControlNet
    unet = model.model.diffusion_model
    if mode == "sd":
        model.control_model.to("meta")  # not used: release its weights
        params = list(unet.parameters())
        freeze_all_but(model, params)
    else:
        params = module.trained
    optimiser = torch.optim.AdamW(params, lr=1e-5)
    module.train()
    n = args.batch
    batch = {
        "jpg": torch.rand(n, args.size, args.size, 3) * 2 - 1,
        "hint": torch.rand(n, args.size, args.size, 3),
        "txt": ["a photograph of an astronaut riding a horse"] * n,
    }

    def step() -> None:
        if mode == "controlnet":
            loss = module.compute_loss(batch)
        else:
            z, cond = module.get_input(batch)
            t = torch.randint(0, model.num_timesteps, (n,))
            noise = torch.randn_like(z)
            context = cond["c_crossattn"][0]
            eps = unet.decode(*unet.encode(q_sample(model, z, t, noise), t, context), context)  # no locked parts
            loss = torch.nn.functional.mse_loss(eps, noise)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    reset_ok = reset_peak_rss()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "mode": mode,
        "trainable_params": sum(p.numel() for p in params),
        "step_s": sum(times) / len(times),
        "step_s_min": min(times),
        "peak_rss_gb": peak_rss_bytes() / 2**30,
        "peak_reset": reset_ok,
    }


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    """Run one mode in a child process; stop it if the machine's available memory falls below --min-free-gb."""
    import psutil

    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--config", str(args.config),
            "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        while child.poll() is None:
            if psutil.virtual_memory().available < args.min_free_gb * 2**30:
                child.kill()
                child.wait()
                raise SystemExit(f"{mode} run stopped: less than {args.min_free_gb} GB of memory left on the machine")
            time.sleep(0.5)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"{mode} run failed (exit {child.returncode}):\n{err.read()[-4000:]}")
        return json.loads(out.read().strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "models" / "cldm_v15.yaml"))
    p.add_argument("--size", type=int, default=256, help="image side in pixels (multiple of 8)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (optimiser state is created)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is the most repeatable on a shared box)")
    p.add_argument("--min-free-gb", type=float, default=1.5,
                   help="stop a run when the machine's available memory drops below this (default: %(default)s)")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.size % 8 or args.size < 16 or args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error("need --size a multiple of 8 (>= 16), --batch >= 1, --steps >= 1, --warmup >= 0")
    sys.path.insert(0, str(ROOT))
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    print(f"config {args.config}, batch {args.batch} at {args.size} px, {args.threads} thread(s), "
          f"{args.warmup} warm-up + {args.steps} timed steps per mode")
    results = {mode: run_mode(mode, args) for mode in MODES}
    for r in results.values():
        print(f"  {r['mode']:>10}: {r['trainable_params'] / 1e6:8.2f} M trainable, {r['step_s']:7.2f} s/step "
              f"(min {r['step_s_min']:.2f}), peak RSS {r['peak_rss_gb']:6.2f} GB")
    sd, cn = results["sd"], results["controlnet"]
    time_ratio = cn["step_s"] / sd["step_s"] - 1
    memory_ratio = cn["peak_rss_gb"] / sd["peak_rss_gb"] - 1
    print(f"ControlNet vs SD fine-tuning: time {time_ratio:+.0%} (paper {PAPER['time']:+.0%}), "
          f"memory {memory_ratio:+.0%} (paper {PAPER['memory']:+.0%})")
    if not (sd["peak_reset"] and cn["peak_reset"]):
        print("note: the peak-RSS mark could not be reset; peaks include model construction")


if __name__ == "__main__":
    main()
