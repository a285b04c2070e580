import os
import sys
from pathlib import Path

# Tests never reach a hub: every weight file is written by the tests themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# Two cores: one thread per test process keeps timings stable when other work runs.
torch.set_num_threads(1)

KEYS_DIR = Path(__file__).parent / "keys"
