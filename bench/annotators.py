"""Time every registered annotator at 512 px with random weights (CPU unless --device says otherwise).

    python bench/annotators.py [--resolution 512] [--repeats 3] [--threads N] [--device cpu]

Prints one row per detector: build time and the median of `repeats` calls after one warm-up call.
Detectors whose package fails to import are listed as unavailable with the reason. Random-weight ZoeDepth is
built at its published size here (the registry builds a reduced one for tests).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import annotator  # noqa: E402
from annotator import registry  # noqa: E402


def full_size(name: str, device: str):
    """The detector with random weights at the size of its published network."""
    if name == "zoe":
        from annotator.zoe import ZoeDetector
        from annotator.zoe.config import ZOED_M12_N

        return registry.Annotator(registry.REGISTRY[name], ZoeDetector(device, random_init=True, config=ZOED_M12_N))
    return annotator.load(name, device=device, random_init=True)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", help="detector names (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    photo = cv2.cvtColor(cv2.imread(str(ROOT / "test_imgs" / "astronaut.png")), cv2.COLOR_BGR2RGB)
    image = annotator.resize_image(photo, args.resolution)
    print(f"input {image.shape[1]}×{image.shape[0]}, device {args.device}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'detector':15s} {'build s':>8s} {'median ms':>10s} {'min ms':>8s}")
    for name in args.only or annotator.available():
        registry.clear_cache()
        try:
            build, detector = timed(lambda: full_size(name, args.device))
        except ImportError as err:
            print(f"{name:15s} unavailable: {err}")
            continue
        detector(image)  # warm-up
        times = [timed(lambda: detector(image))[0] * 1000 for _ in range(args.repeats)]
        print(f"{name:15s} {build:8.2f} {statistics.median(times):10.1f} {min(times):8.1f}")


if __name__ == "__main__":
    main()
