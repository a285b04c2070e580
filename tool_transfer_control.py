"""Move a ControlNet trained on SD 1.5 onto another SD 1.5-derived base model.

    python tool_transfer_control.py --sd15 v1-5-pruned.ckpt --control control_sd15_openpose.pth \
        --base anything-v3-full.safetensors --out control_any3_openpose.safetensors

Rule (the original's): VAE and text encoder come from the new base; every other tensor X gets
``X + (base[twin] - sd15[twin])`` where twin is X's UNet name (control_model.* -> model.diffusion_model.*),
if the base has it; tensors without a twin (hint encoder, zero convolutions) are kept. A control-only
input gives a control-only output.
"""
from __future__ import annotations

import argparse
import sys

from cldm.model import CheckpointError
from cldm.tools import ToolError, transfer_control_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd15", required=True, help="the SD 1.5 base the ControlNet was trained on")
    parser.add_argument("--control", required=True, help="the ControlNet file (full or control-only)")
    parser.add_argument("--base", required=True, help="the new SD 1.5-derived base")
    parser.add_argument("--out", required=True, help="output .safetensors file (must not exist)")
    args = parser.parse_args(argv)
    try:
        result = transfer_control_files(args.sd15, args.control, args.base, args.out)
    except (CheckpointError, ToolError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Transferred {len(result)} tensors; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
