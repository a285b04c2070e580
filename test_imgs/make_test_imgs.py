"""Write the sample images in this folder: five scikit-image photos and two generated line drawings.

    python test_imgs/make_test_imgs.py

Photos are shrunk so the long side is at most LONG_SIDE px (keeps the folder small); licences are
listed in README.md. The drawings are dark strokes on white, deterministic (fixed seed).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from skimage import data

HERE = Path(__file__).resolve().parent
LONG_SIDE = 384
PHOTOS = {
    "astronaut": data.astronaut,  # person
    "coffee": data.coffee,  # cup on a table
    "chelsea": data.chelsea,  # cat
    "rocket": data.rocket,  # launch tower: many straight lines (M-LSD)
    "camera": data.camera,  # grey photo
}
INK = (20, 20, 20)


def shrink(img: np.ndarray) -> np.ndarray:
    k = LONG_SIDE / max(img.shape[:2])
    if k >= 1:
        return img
    size = (round(img.shape[1] * k), round(img.shape[0] * k))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def wobbly(points, rng: np.random.Generator, jitter: float = 0.7) -> np.ndarray:
    """Polyline through `points`, resampled every few px with a little hand tremor."""
    out = []
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        n = max(2, int(np.hypot(x1 - x0, y1 - y0) / 12))
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        out.append(np.array([x0, y0]) * (1 - t) + np.array([x1, y1]) * t)
    out.append(np.array([points[-1]], float))
    line = np.concatenate(out)
    line[1:-1] += rng.normal(0, jitter, line[1:-1].shape)
    return line.round().astype(np.int32)


def house_sketch(size: int = 384) -> np.ndarray:
    rng = np.random.default_rng(1)
    img = np.full((size, size, 3), 255, np.uint8)
    strokes = [
        [(70, 200), (70, 330), (310, 330), (310, 200), (70, 200)],  # walls
        [(55, 205), (190, 90), (325, 205)],  # roof
        [(250, 140), (250, 95), (280, 95), (280, 165)],  # chimney
        [(165, 330), (165, 255), (215, 255), (215, 330)],  # door
        [(95, 225), (145, 225), (145, 270), (95, 270), (95, 225)],  # left window
        [(235, 225), (285, 225), (285, 270), (235, 270), (235, 225)],  # right window
        [(120, 225), (120, 270)], [(95, 247), (145, 247)],  # window bars
        [(20, 332), (364, 332)],  # ground
    ]
    for stroke in strokes:
        cv2.polylines(img, [wobbly(stroke, rng)], False, INK, 3, cv2.LINE_AA)
    cv2.circle(img, (205, 295), 4, INK, -1, cv2.LINE_AA)  # door knob
    cv2.circle(img, (330, 60), 28, INK, 3, cv2.LINE_AA)  # sun
    return img


def stick_figure(size: int = 384) -> np.ndarray:
    rng = np.random.default_rng(2)
    img = np.full((size, size, 3), 255, np.uint8)
    cv2.ellipse(img, (192, 80), (32, 36), 0, 0, 360, INK, 4, cv2.LINE_AA)  # head
    strokes = [
        [(192, 116), (190, 240)],  # body
        [(191, 150), (130, 200), (105, 170)],  # left arm, waving
        [(191, 150), (255, 195), (285, 230)],  # right arm
        [(190, 240), (150, 330), (125, 335)],  # left leg
        [(190, 240), (230, 330), (258, 332)],  # right leg
    ]
    for stroke in strokes:
        cv2.polylines(img, [wobbly(stroke, rng, jitter=1.0)], False, INK, 4, cv2.LINE_AA)
    return img


def main() -> None:
    for name, load in PHOTOS.items():
        img = shrink(load())
        cv2.imwrite(str(HERE / f"{name}.png"), img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(HERE / "house_sketch.png"), house_sketch())
    cv2.imwrite(str(HERE / "stick_figure_scribble.png"), stick_figure())
    for path in sorted(HERE.glob("*.png")):
        print(f"{path.name:28s} {path.stat().st_size / 1024:7.1f} KiB")


if __name__ == "__main__":
    main()
