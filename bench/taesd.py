"""Time one latent decode: TAESD vs the SD 1.5 VAE (both full size, random weights).

    python -m bench.taesd [--latent 64] [--threads N] [--device cpu] [--dtype float32] [--repeats 3]

A 64x64 latent is a 512x512 image. Each side is warmed up once, then the best of `repeats` decodes is reported
(the VAE includes its 1/0.18215 rescale, TAESD decodes the latent directly), with the ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cldm.config import load_config  # noqa: E402
from ldm.taesd import TAESD  # noqa: E402
from ldm.vae import AutoencoderKL  # noqa: E402

SCALE_FACTOR = 0.18215


def best_time(fn, z: torch.Tensor, repeats: int) -> float:
    fn(z)  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        if z.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(z)
        if z.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    taesd = TAESD().eval().to(args.device, dtype)
    vae = AutoencoderKL(load_config(ROOT / "models" / "cldm_v15.yaml").first_stage).eval().to(args.device, dtype)
    z = torch.randn(1, 4, args.latent, args.latent, device=args.device, dtype=dtype)
    tiny = best_time(taesd.decode, z, args.repeats)
    full = best_time(lambda z: vae.decode(z / SCALE_FACTOR), z, args.repeats)
    print(f"{args.latent}x{args.latent} latent -> {8 * args.latent}px, {args.device} {args.dtype}, "
          f"{args.threads} threads, load {os.getloadavg()[0]:.1f}: TAESD {tiny * 1e3:.0f} ms, "
          f"SD VAE {full * 1e3:.0f} ms, ratio {full / tiny:.1f}")


if __name__ == "__main__":
    main()
