"""Training data in the Fill50K layout, and a generator for small synthetic Fill50K-style sets.

Layout of a data folder (any folder, not only Fill50K)::

    DIR/prompt.json      one JSON object per line: {"source": "source/0.png", "target": "target/0.png", "prompt": "..."}
    DIR/source/...       control images (hints), read with OpenCV
    DIR/target/...       images to generate

Each item is ``dict(jpg=target, txt=prompt, hint=source)``: HWC float32 RGB, ``jpg`` in [-1, 1], ``hint`` in [0, 1].

Generator::

    python -m cldm.dataset make-fill --out DIR --n 100 --size 64 --seed 0
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

PROMPT_FILE = "prompt.json"
REQUIRED_FIELDS = ("source", "target", "prompt")


class DatasetError(ValueError):
    """A data folder that does not follow the Fill50K layout."""


@dataclass(frozen=True)
class Record:
    source: Path
    target: Path
    prompt: str


def read_records(root: str | Path) -> list[Record]:
    """Parse and check ``root/prompt.json``; every referenced file must exist."""
    root = Path(root)
    index = root / PROMPT_FILE
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    if not index.is_file():
        raise DatasetError(f"{index} not found: a data folder needs a {PROMPT_FILE} with one JSON object per line")
    records = []
    with open(index, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            records.append(_parse_line(root, index, number, line))
    if not records:
        raise DatasetError(f"{index} has no entries")
    return records


def _parse_line(root: Path, index: Path, number: int, line: str) -> Record:
    where = f"{index}, line {number}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(item).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in item]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {', '.join(missing)}")
    wrong = [k for k in REQUIRED_FIELDS if not isinstance(item[k], str)]
    if wrong:
        raise DatasetError(f"{where}: field(s) {', '.join(wrong)} must be strings")
    source, target = root / item["source"], root / item["target"]
    for name, path in (("source", source), ("target", target)):
        if not path.is_file():
            raise DatasetError(f"{where}: {name} file {path} not found")
    return Record(source, target, item["prompt"])


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path} is not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Fill50KDataset(Dataset):
    """Items ``dict(jpg=target in [-1, 1], txt=prompt, hint=source in [0, 1])``, HWC float32 RGB."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.records = read_records(self.root)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> dict:
        record = self.records[idx]
        source, target = read_rgb(record.source), read_rgb(record.target)
        if source.shape != target.shape:
            raise DatasetError(
                f"item {idx}: source {record.source} is {source.shape[1]}x{source.shape[0]} but "
                f"target {record.target} is {target.shape[1]}x{target.shape[0]}; they must match"
            )
        return dict(
            jpg=target.astype(np.float32) / 127.5 - 1.0,
            txt=record.prompt,
            hint=source.astype(np.float32) / 255.0,
        )


# ----------------------------------------------------------------------------------------------------------------
# Synthetic Fill50K-style generator: a filled circle on a plain background; the hint is the circle's outline.

COLOURS: dict[str, tuple[int, int, int]] = {  # RGB
    "red": (220, 20, 60), "orange": (255, 140, 0), "gold": (255, 215, 0), "yellow": (255, 255, 0),
    "olive": (128, 128, 0), "lime green": (50, 205, 50), "forest green": (34, 139, 34), "teal": (0, 128, 128),
    "cyan": (0, 255, 255), "sky blue": (135, 206, 235), "royal blue": (65, 105, 225), "navy": (0, 0, 128),
    "purple": (128, 0, 128), "violet": (238, 130, 238), "deep pink": (255, 20, 147), "brown": (139, 69, 19),
    "burly wood": (222, 184, 135), "beige": (245, 245, 220), "white": (255, 255, 255), "gray": (128, 128, 128),
    "black": (0, 0, 0), "salmon": (250, 128, 114), "khaki": (240, 230, 140), "maroon": (128, 0, 0),
}


def make_fill(out: str | Path, n: int, size: int, seed: int = 0) -> Path:
    """Write ``n`` seeded Fill50K-style items of ``size``×``size`` px to a new folder ``out``."""
    out = Path(out)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if size < 16 or size % 8:
        raise ValueError(f"size must be a multiple of 8 (the VAE's down-sampling) and at least 16 px, got {size}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    (out / "source").mkdir(parents=True, exist_ok=True)
    (out / "target").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    thickness = max(1, size // 128)
    lines = []
    for i in range(n):
        circle, background = rng.choice(len(names), size=2, replace=False)
        radius = int(rng.integers(size // 8, size // 3 + 1))
        cx, cy = (int(v) for v in rng.integers(radius, size - radius + 1, size=2))
        target = np.empty((size, size, 3), np.uint8)
        target[:] = COLOURS[names[background]][::-1]  # BGR for OpenCV
        cv2.circle(target, (cx, cy), radius, COLOURS[names[circle]][::-1], thickness=-1, lineType=cv2.LINE_AA)
        source = np.zeros((size, size, 3), np.uint8)
        cv2.circle(source, (cx, cy), radius, (255, 255, 255), thickness=thickness, lineType=cv2.LINE_AA)
        cv2.imwrite(str(out / "source" / f"{i}.png"), source)
        cv2.imwrite(str(out / "target" / f"{i}.png"), target)
        prompt = f"{names[circle]} circle with {names[background]} background"
        lines.append(json.dumps({"source": f"source/{i}.png", "target": f"target/{i}.png", "prompt": prompt}))
    (out / PROMPT_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cldm.dataset", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fill = sub.add_parser("make-fill", help="write a synthetic Fill50K-style data folder")
    fill.add_argument("--out", required=True, help="new folder to create")
    fill.add_argument("--n", type=int, default=100, help="number of items")
    fill.add_argument("--size", type=int, default=64, help="image side in pixels")
    fill.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = make_fill(args.out, args.n, args.size, args.seed)
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    print(f"wrote {args.n} items of {args.size}x{args.size} px to {out}")


if __name__ == "__main__":
    main()
