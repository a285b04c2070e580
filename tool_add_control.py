"""Make the initial ControlNet checkpoint from a Stable Diffusion 1.5 checkpoint.

    python tool_add_control.py SD_CKPT OUT.safetensors [--config models/cldm_v15.yaml]

The ControlNet's encoder copy starts from the SD UNet encoder; the hint encoder and the zero convolutions are
new (zero convolutions and the hint encoder's last conv exactly zero). The output is the full ControlLDM state
dict in safetensors, ready for `train.py --resume`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cldm.config import ConfigError
from cldm.model import CheckpointError
from cldm.tools import ToolError, add_control_file

DEFAULT_CONFIG = Path(__file__).resolve().parent / "models" / "cldm_v15.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sd_ckpt", help="SD 1.5 checkpoint (.ckpt, .pth or .safetensors; may be wrapped in state_dict)")
    parser.add_argument("out", help="output .safetensors file (must not exist)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="ControlLDM yaml (default: models/cldm_v15.yaml)")
    args = parser.parse_args(argv)
    try:
        result = add_control_file(args.sd_ckpt, args.out, args.config)
    except (CheckpointError, ConfigError, ToolError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in result.new:
        print(f"These weights are newly added: {key}")
    for key in result.defaulted:
        print(f"Not in the SD checkpoint, kept from the config: {key}")
    print(f"Copied {len(result.copied)} tensors, added {len(result.new)} new ones; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
