"""Hugging Face Space entry point: every app as tabs, listening on all interfaces (the Space's proxy)."""
import sys

from launch import main

if __name__ == "__main__":
    sys.exit(main(["--app", "all", "--listen", *sys.argv[1:]]))
