"""Benchmark: our generate() vs diffusers' StableDiffusionControlNetPipeline on the same random weights (CPU).

    python -m bench.sampling [--threads N] [--res 256 512] [--steps 20] [--dtype float32 bfloat16]
    python -m bench.sampling --fast [--res 512]      # the Fast preset against diffusers + LCMScheduler + LCM-LoRA

Random full-size weights are built once in the official layout (every parameter non-zero, zero convolutions
included) and written to a .pth file (torch's zip format, memory-mapped on load); a converted copy is saved in diffusers' folder layout. Each
measurement then runs in a fresh subprocess that loads its side from disk and generates one image
(batch 2 with classifier-free guidance, scale 9, eta 0) after a warm-up step. Reported per run:
* `total`: wall time of the whole call (text encoding, the DDIM steps, VAE decode);
* `step`: mean time of the DDIM steps after the first (from the per-step callbacks);
* `peak_rss_gen`: peak resident memory while generating (the kernel's high-water mark, reset before);
* `maxrss`: getrusage's ru_maxrss (on Linux the reset above lowers it too, so it then equals `peak_rss_gen`).
With `--repeat R` the Fast cases, which take seconds, generate R times in their process: `total` and `step` are
then those of the fastest of the R (as timeit reports its best: on a shared machine the slower runs measure the
neighbours), `median` the median total, and the peak RSS the highest of the R. Ratios are given for both.
RSS counts memory-mapped weight pages that have been touched, for both sides alike.
The machine load (os.getloadavg) is recorded before each run: on a shared 2-core box it dominates timings.

`--fast` times one image with 4 LCM steps and guidance 1 (batch 1) with a random rank-64 LoRA in the kohya /
diffusers-names layout of the LCM-LoRA merged into the UNet: (a) diffusers fp32 (`LCMScheduler`,
`load_lora_weights` + `fuse_lora`); (b) ours with Fast in bfloat16; (c) the same with TAESD decoding (random
weights); plus DDIM 20 steps in bfloat16 (ours) against diffusers fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import torch

from cldm.allocator import HUGE_PAGES

ROOT = Path(__file__).resolve().parents[1]
PROMPT, A_PROMPT, N_PROMPT = "a house by a lake", "best quality, extremely detailed", "lowres, bad anatomy"
SCALE, SEED = 9.0, 12345
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def control_map(res: int) -> np.ndarray:
    """A deterministic line drawing (white strokes on black), like a Canny map."""
    img = np.zeros((res, res, 3), np.uint8)
    yy, xx = np.mgrid[:res, :res]
    for k in range(1, 6):
        ring = np.abs(np.hypot(yy - res / 2, xx - res / 2) - k * res / 12) < 1.5
        img[ring] = 255
    img[res // 3, :] = 255
    return img


class PeakRSS:
    """Peak resident set size of this process while the block runs.

    On Linux: the kernel's high-water mark (VmHWM in /proc/self/status), reset on entry by writing 5 to
    /proc/self/clear_refs, so no thread competes with the measured code for the interpreter (a thread sampling
    every 10 ms slowed the side with more Python-level calls by up to 5 %). Elsewhere: sampled every 10 ms."""

    CLEAR_REFS, STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")

    def __enter__(self) -> "PeakRSS":
        self.peak, self._thread = 0, None
        try:
            self.CLEAR_REFS.write_text("5")
            self._kernel = self._hwm() is not None
        except OSError:
            self._kernel = False
        if not self._kernel:
            self._stop = threading.Event()
            self._proc = psutil.Process()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _hwm(self) -> int | None:
        for line in self.STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self._kernel:
            self.peak = self._hwm()
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def prepare(work: Path, config: Path) -> None:
    """Write ours.pth (official layout), the diffusers folder holding the same weights, and a random LoRA."""
    from cldm.model import create_model, load_state_dict
    from cldm.shared_model import randomize_
    from tests.tiny import POSITION_IDS, hf_tokenizer, to_diffusers

    model = create_model(config)
    randomize_(model, seed=0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state[POSITION_IDS] = torch.arange(model.cond_stage_model.max_length)[None]
    torch.save(state, work / "ours.pth")  # streams tensor by tensor (safetensors' save_file copies all first)
    del model, state
    ref = to_diffusers(load_state_dict(work / "ours.pth"), config)
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        getattr(ref, name).save_pretrained(work / "diffusers" / name)
    hf_tokenizer(work / "diffusers" / "tokenizer")
    write_lora(ref.unet, work / "lcm_lora.safetensors")


def write_lora(unet: torch.nn.Module, path: Path, rank: int = 64) -> None:
    """A random LoRA on every Linear and Conv2d of the UNet's blocks, kohya layout with diffusers names (as the
    LCM-LoRA file): `lora_unet_<module path with _>.lora_down/lora_up.weight`, `.alpha`."""
    from safetensors.torch import save_file

    gen, tensors = torch.Generator().manual_seed(7), {}
    for name, module in unet.named_modules():
        if not name.startswith(("down_blocks", "mid_block", "up_blocks")) or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        fan_in = module.weight[0].numel()
        kernel = module.weight.shape[2:] if module.weight.ndim == 4 else ()
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, *module.weight.shape[1:], generator=gen) / fan_in**0.5
        tensors[f"{key}.lora_up.weight"] = torch.randn(module.weight.shape[0], rank, *([1] * len(kernel)), generator=gen) * 0.01
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))


def run_ours(work: Path, config: Path, res: int, steps: int, dtype: torch.dtype, warmup: int) -> dict:
    from cldm.model import create_model, load_full_checkpoint
    from cldm.control import ControlledDenoiser, ControlMode, ControlUnit
    from cldm.pipeline import GenerationParams, generate

    model = create_model(config, dtype=dtype)
    load_full_checkpoint(model, work / "ours.pth")
    cmap = control_map(res)
    params = GenerationParams(prompt=PROMPT, a_prompt=A_PROMPT, n_prompt=N_PROMPT, steps=steps, scale=SCALE,
                              seed=SEED, image_resolution=res)
    if warmup:
        generate(model, cmap, GenerationParams(prompt=PROMPT, steps=1, seed=SEED, scale=SCALE))
    result = timed(lambda on_step: generate(model, cmap, params, callback=on_step).images[0], repeat=1)
    # One conditional ε at a fixed input, for the bf16-vs-fp32 accuracy check.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, res // 8, res // 8, generator=g)
    hint = torch.from_numpy(cmap).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        context = model.get_learned_conditioning([PROMPT])
        unit = ControlUnit(model.control_model, cmap)
        eps = ControlledDenoiser(model, [unit], ControlMode.BALANCED, torch.tensor([501]))(
            x, torch.tensor([501]), {"c_concat": [hint.to(dtype)], "c_crossattn": [context]})
    return result | {"eps": eps.float()}


def run_ours_fast(work: Path, config: Path, res: int, dtype: torch.dtype, warmup: int, taesd: bool,
                  repeat: int) -> dict:
    from cldm.checkpoint import load_state_dict
    from cldm.lora import merge_lora, read_lora
    from cldm.model import create_model, load_full_checkpoint
    from cldm.pipeline import GenerationParams, generate
    from cldm.shared_model import randomize_
    from ldm.taesd import TAESD

    model = create_model(config, dtype=dtype, init_weights=False)
    load_full_checkpoint(model, work / "ours.pth")
    # As the app does: the originals are read again from the base file on unmerge, not kept as a copy.
    merge_lora(model, read_lora(work / "lcm_lora.safetensors", model), 1.0,
               reload=lambda keys: load_state_dict(work / "ours.pth"))
    decoder = randomize_(TAESD(), 0).to(dtype).eval() if taesd else None
    cmap = control_map(res)
    params = GenerationParams(prompt=PROMPT, a_prompt=A_PROMPT, n_prompt=N_PROMPT, steps=4, scale=1.0, seed=SEED,
                              image_resolution=res, sampler="lcm")
    if warmup:
        generate(model, cmap, GenerationParams(prompt=PROMPT, steps=1, seed=SEED, scale=1.0, sampler="lcm"), decoder=decoder)
    return timed(lambda on_step: generate(model, cmap, params, on_step, decoder).images[0], repeat)


def run_diffusers(work: Path, res: int, steps: int, dtype: torch.dtype, warmup: int, fast: bool = False,
                  repeat: int = 1) -> dict:
    from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline,
                           UNet2DConditionModel)
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    d = work / "diffusers"
    pipe = StableDiffusionControlNetPipeline(
        vae=AutoencoderKL.from_pretrained(d / "vae", torch_dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(d / "text_encoder", torch_dtype=dtype),
        tokenizer=CLIPTokenizer.from_pretrained(d / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(d / "unet", torch_dtype=dtype),
        controlnet=ControlNetModel.from_pretrained(d / "controlnet", torch_dtype=dtype),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(control_map(res))
    kwargs = dict(prompt=PROMPT + ", " + A_PROMPT, negative_prompt=N_PROMPT, image=image, guidance_scale=SCALE,
                  eta=0.0, output_type="np")
    if fast:
        from diffusers import LCMScheduler

        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        pipe.load_lora_weights(str(work), weight_name="lcm_lora.safetensors")
        pipe.fuse_lora(lora_scale=1.0)
        kwargs.update(guidance_scale=1.0)
        kwargs.pop("eta")
        steps = 4
    if warmup:
        pipe(**kwargs, num_inference_steps=1, generator=torch.Generator().manual_seed(SEED))
    def one(on_step) -> np.ndarray:
        def callback(pipeline, i, t, tensors):
            on_step()
            return tensors

        with torch.no_grad():
            out = pipe(**kwargs, num_inference_steps=steps, generator=torch.Generator().manual_seed(SEED),
                       callback_on_step_end=callback).images[0]
        return (out * 255).round().astype(np.uint8)

    return timed(one, repeat)


def timed(generate_one, repeat: int) -> dict:
    """Runs `generate_one(on_step)` (one image; `on_step()` called after each step) `repeat` times; the totals,
    the fastest run's mean step after the first, and the highest peak RSS."""
    totals, steps, peak, finite = [], [], 0, True
    for _ in range(repeat):
        stamps: list[float] = []
        with PeakRSS() as rss:
            start = time.perf_counter()
            image = generate_one(lambda *_: stamps.append(time.perf_counter()))
            totals.append(time.perf_counter() - start)
        steps.append(float(np.diff(stamps).mean()) if len(stamps) > 1 else float("nan"))
        peak, finite = max(peak, rss.peak), finite and bool(np.isfinite(image.astype(float)).all())
    best = int(np.argmin(totals))
    return {"total_s": totals[best], "median_s": float(np.median(totals)), "totals_s": totals, "step_s": steps[best],
            "peak_rss_gen_gb": peak / 1e9, "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "finite": finite, "eps": None}


def child(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # diffusers' single-file deprecation notices
    torch.set_num_threads(args.threads)
    work, config = Path(args.work), Path(args.config)
    if args.child == "prepare":
        prepare(work, config)
        return
    dtype = DTYPES[args.dtype[0]]
    res = args.res[0]
    if args.child == "ours":
        result = run_ours(work, config, res, args.steps, dtype, args.warmup)
    elif args.child in ("ours_fast", "ours_fast_taesd"):
        result = run_ours_fast(work, config, res, dtype, args.warmup, taesd=args.child == "ours_fast_taesd",
                               repeat=args.repeat)
    else:
        fast = args.child == "diffusers_fast"
        result = run_diffusers(work, res, args.steps, dtype, args.warmup, fast, repeat=args.repeat if fast else 1)
    eps = result.pop("eps")
    if eps is not None:
        torch.save(eps, work / f"eps_{args.dtype[0]}_{res}.pt")
    (work / "result.json").write_text(json.dumps(result))


def spawn(args: argparse.Namespace, work: Path, role: str, res: int = 0, dtype: str = "float32") -> dict:
    cmd = [sys.executable, "-m", "bench.sampling", "--child", role, "--work", str(work), "--config", args.config,
           "--threads", str(args.threads), "--steps", str(args.steps), "--res", str(res), "--dtype", dtype,
           "--warmup", str(args.warmup), "--repeat", str(args.repeat)]
    load = os.getloadavg()[0]
    # Our side runs with the process settings launch.py gives the product (huge pages for large tensors).
    ours = HUGE_PAGES if role.startswith("ours") else {}
    subprocess.run(cmd, check=True, cwd=ROOT, env={**ours, **os.environ, "HF_HUB_OFFLINE": "1"})
    if role == "prepare":
        return {}
    return {**json.loads((work / "result.json").read_text()), "load_before": load}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--res", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    parser.add_argument("--diffusers-dtype", nargs="+", default=["float32"], choices=sorted(DTYPES))
    parser.add_argument("--config", default=str(ROOT / "models" / "cldm_v15.yaml"))
    parser.add_argument("--work", help="folder for the weight files, kept and reused (default: a temporary folder)")
    parser.add_argument("--warmup", type=int, default=1, help="run one 1-step generation before timing (1/0)")
    parser.add_argument("--fast", action="store_true", help="the Fast preset benchmark (see the module docstring)")
    parser.add_argument("--repeat", type=int, default=3, help="timed generations per Fast case (the best is reported)")
    parser.add_argument("--child", choices=["prepare", "ours", "diffusers", "ours_fast", "ours_fast_taesd",
                                            "diffusers_fast"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"threads={args.threads} steps={args.steps} cpu_count={os.cpu_count()} load={os.getloadavg()}", flush=True)
        marker = work / "prepared.txt"
        if not marker.exists() or marker.read_text() != args.config:
            t0 = time.perf_counter()
            spawn(args, work, "prepare")
            marker.write_text(args.config)
            print(f"prepared weights in {time.perf_counter() - t0:.0f} s", flush=True)
        for res in args.res:
            if args.fast:
                results = {("diffusers_fast", "float32"): spawn(args, work, "diffusers_fast", res, "float32"),
                           ("ours_fast", "bfloat16"): spawn(args, work, "ours_fast", res, "bfloat16"),
                           ("ours_fast_taesd", "bfloat16"): spawn(args, work, "ours_fast_taesd", res, "bfloat16"),
                           ("diffusers", "float32"): spawn(args, work, "diffusers", res, "float32"),
                           ("ours", "bfloat16"): spawn(args, work, "ours", res, "bfloat16")}
                report(res, results, work, baselines={"ours_fast": "diffusers_fast", "ours_fast_taesd": "diffusers_fast",
                                                      "ours": "diffusers"})
                continue
            results = {("diffusers", d): spawn(args, work, "diffusers", res, d) for d in args.diffusers_dtype}
            results.update({("ours", d): spawn(args, work, "ours", res, d) for d in args.dtype})
            report(res, results, work)


def report(res: int, results: dict, work: Path, baselines: dict[str, str] | None = None) -> None:
    baselines = baselines or {"ours": "diffusers"}
    for (side, dtype), r in results.items():
        baseline = results.get((baselines.get(side), "float32"))
        ratio = f" ratio_total={r['total_s'] / baseline['total_s']:.2f} ratio_median={r['median_s'] / baseline['median_s']:.2f}" \
            f" ratio_step={r['step_s'] / baseline['step_s']:.2f}" if baseline else ""
        runs = f" (median {r['median_s']:.2f}s of {len(r['totals_s'])})" if len(r["totals_s"]) > 1 else ""
        print(f"res={res} {side:9s} {dtype:8s} total={r['total_s']:.2f}s{runs} step={r['step_s']:.2f}s "
              f"peak_rss_gen={r['peak_rss_gen_gb']:.2f}GB maxrss={r['maxrss_gb']:.2f}GB "
              f"load_before={r['load_before']:.2f} finite={r['finite']}{ratio}", flush=True)
    ref = work / f"eps_float32_{res}.pt"
    for dtype in ("bfloat16", "float16"):
        other = work / f"eps_{dtype}_{res}.pt"
        if ref.exists() and other.exists():
            a, b = torch.load(ref, weights_only=True), torch.load(other, weights_only=True)
            print(f"res={res} eps {dtype} vs float32: relative error {float((b - a).norm() / a.norm()):.4f}", flush=True)


if __name__ == "__main__":
    main()
