"""What the apps run on: the shared model (one SD base, ControlNets swapped in, LoRAs merged), the detectors
(both finding their weight files through the same `WeightFiles`) and the LoRA files the pages offer."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import annotator
from apps.result_files import ResultFiles
from apps.runs import RunLog
from cldm.control_bank import ControlBank
from cldm.shared_model import SharedModel

LORA_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
LORA_DIR = Path(__file__).resolve().parents[1] / "models" / "lora"


@dataclass
class Backend:
    model: SharedModel
    lora_files: dict[str, Path] = field(default_factory=dict)  # name shown on the pages -> file
    preselected_loras: tuple[tuple[str, float], ...] = ()  # (name, scale) chosen with --lora
    results: ResultFiles = field(default_factory=ResultFiles)  # where the pages write their result PNGs
    runs: RunLog = field(default_factory=RunLog)  # the generation runs served (and the test hold, if any)
    bank: ControlBank = field(init=False)  # extra ControlNets for the multi-condition page

    def __post_init__(self) -> None:
        self.bank = ControlBank(self.model)

    @property
    def tiny(self) -> bool:
        return self.model.tiny

    @property
    def fast_by_default(self) -> bool:
        """The Fast preset starts switched on on a CPU (a 20-step DDIM image takes minutes there); the tiny
        test model keeps the original settings as its baseline."""
        return self.model.device.type == "cpu" and not self.tiny

    def detector(self, name: str) -> annotator.Annotator:
        """The detector `name` on the model's device (random weights in tiny mode); the registry keeps one
        networked detector resident."""
        return annotator.load(name, device=str(self.model.device), random_init=self.model.tiny,
                              files=self.model.files)


def lora_option(text: str) -> tuple[Path, float]:
    """`FILE` or `FILE:SCALE` (the --lora option) -> (path, scale); scale 1 when not given."""
    path, sep, scale = text.rpartition(":")
    if sep and path and not scale.startswith(("/", "\\")):
        try:
            return Path(path), float(scale)
        except ValueError:
            pass
    return Path(text), 1.0


def find_loras(options: list[str], folder: Path | None = LORA_DIR) -> tuple[dict[str, Path], tuple[tuple[str, float], ...]]:
    """The LoRA files offered: every file in `folder` (None: none) plus the --lora ones, which are preselected
    with their scales. A --lora file that does not exist raises FileNotFoundError."""
    files = {}
    if folder is not None and folder.is_dir():
        files = {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in LORA_SUFFIXES}
    chosen = []
    for option in options:
        path, scale = lora_option(option)
        if not path.is_file():
            raise FileNotFoundError(f"--lora {option}: no such file {path}")
        files[path.name] = path
        chosen.append((path.name, scale))
    return files, tuple(chosen)
