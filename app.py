"""Hugging Face Space entry point: every app as tabs, listening on all interfaces (the Space's proxy), in the
precision that suits the hardware (`--dtype auto`: float16 on a GPU, bfloat16 on a CPU that computes it natively,
float32 elsewhere); a CPU starts the pages with the Fast preset. Options given to this script override these."""
import sys

from launch import main

SPACE_ARGS = ("--app", "all", "--listen", "--dtype", "auto")


def space_argv(argv: list[str]) -> list[str]:
    return [*SPACE_ARGS, *argv]


if __name__ == "__main__":
    sys.exit(main(space_argv(sys.argv[1:])))
