"""Body pose from heatmaps and part affinity fields: peaks, limb scoring, greedy person assembly.

`candidate` is an (n, 4) float array of all peaks (x, y, score, id); `subset` is (people, 20):
columns 0-17 hold the candidate id of each COCO-18 keypoint (-1 = missing), 18 the total score,
19 the number of parts.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

NUM_PARTS = 18
PEAK_THRESHOLD = 0.1
PAF_THRESHOLD = 0.05
LIMB_SAMPLES = 10
# COCO-18 keypoint pairs (0-based) in the original's order; the last two (ear-shoulder) are
# scored and can join people but never start one, and are not drawn.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)
# PAF channels (x, y) of each limb
LIMB_PAFS = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
    (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27),
)
LIMBS_STARTING_PEOPLE = 17


def find_peaks(heatmaps: np.ndarray) -> list[list[tuple[float, float, float, int]]]:
    """Per keypoint, the local maxima (≥ 4 neighbours) of the sigma-3 smoothed map above 0.1,
    in row-major order, as (x, y, unsmoothed score, running id)."""
    peaks, next_id = [], 0
    for part in range(NUM_PARTS):
        raw = heatmaps[:, :, part]
        smooth = gaussian_filter(raw, sigma=3)
        is_peak = smooth > PEAK_THRESHOLD
        is_peak[1:, :] &= smooth[1:, :] >= smooth[:-1, :]
        is_peak[:-1, :] &= smooth[:-1, :] >= smooth[1:, :]
        is_peak[:, 1:] &= smooth[:, 1:] >= smooth[:, :-1]
        is_peak[:, :-1] &= smooth[:, :-1] >= smooth[:, 1:]
        ys, xs = np.nonzero(is_peak)
        peaks.append([(x, y, raw[y, x], next_id + i) for i, (x, y) in enumerate(zip(xs, ys))])
        next_id += len(xs)
    return peaks


def limb_score(paf_x: np.ndarray, paf_y: np.ndarray, a, b, image_height: int) -> float | None:
    """Mean PAF projection on the a→b direction over 10 samples plus a length prior, or None
    unless > 80 % of the samples exceed 0.05 and the total is positive."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    norm = max(0.001, math.sqrt(dx * dx + dy * dy))
    xs = np.rint(np.linspace(a[0], b[0], num=LIMB_SAMPLES)).astype(int)
    ys = np.rint(np.linspace(a[1], b[1], num=LIMB_SAMPLES)).astype(int)
    samples = paf_x[ys, xs] * (dx / norm) + paf_y[ys, xs] * (dy / norm)
    score = sum(samples) / len(samples) + min(0.5 * image_height / norm - 1, 0)
    if np.count_nonzero(samples > PAF_THRESHOLD) > 0.8 * len(samples) and score > 0:
        return score
    return None


def connect_limbs(pafs: np.ndarray, peaks) -> list[np.ndarray | None]:
    """Per limb, rows (id_a, id_b, score, i, j) picked greedily by score, each peak used once;
    None where either keypoint has no peak."""
    connections = []
    for (part_a, part_b), (cx, cy) in zip(LIMBS, LIMB_PAFS):
        cand_a, cand_b = peaks[part_a], peaks[part_b]
        if not cand_a or not cand_b:
            connections.append(None)
            continue
        scored = []
        for i, a in enumerate(cand_a):
            for j, b in enumerate(cand_b):
                score = limb_score(pafs[:, :, cx], pafs[:, :, cy], a, b, pafs.shape[0])
                if score is not None:
                    scored.append((i, j, score))
        scored.sort(key=lambda c: c[2], reverse=True)
        rows, used_a, used_b = [], set(), set()
        for i, j, score in scored:
            if i in used_a or j in used_b:
                continue
            rows.append((cand_a[i][3], cand_b[j][3], score, i, j))
            used_a.add(i)
            used_b.add(j)
            if len(rows) >= min(len(cand_a), len(cand_b)):
                break
        connections.append(np.array(rows, dtype=np.float64).reshape(-1, 5))
    return connections


def assemble_people(connections, candidate: np.ndarray) -> np.ndarray:
    """Greedy grouping of connections into people (the original's rules); drops people with
    < 4 parts or a mean score < 0.4."""
    subset = np.full((0, NUM_PARTS + 2), -1.0)
    for k, rows in enumerate(connections):
        if rows is None:
            continue
        part_a, part_b = LIMBS[k]
        for id_a, id_b, score, _, _ in rows:
            owners = [n for n in range(len(subset)) if subset[n][part_a] == id_a or subset[n][part_b] == id_b]
            if len(owners) == 1 or (len(owners) >= 2 and _overlap(subset, owners[0], owners[1])):
                # extend the first owner (for 3+ owners the original crashes; the first two are used)
                n = owners[0]
                if len(owners) >= 2 or subset[n][part_b] != id_b:
                    subset[n][part_b] = id_b
                    subset[n][-1] += 1
                    subset[n][-2] += candidate[int(id_b), 2] + score
            elif len(owners) >= 2:  # two disjoint people joined by this limb: merge
                n1, n2 = owners[0], owners[1]
                subset[n1][:-2] += subset[n2][:-2] + 1
                subset[n1][-2:] += subset[n2][-2:]
                subset[n1][-2] += score
                subset = np.delete(subset, n2, 0)
            elif k < LIMBS_STARTING_PEOPLE:
                row = np.full(NUM_PARTS + 2, -1.0)
                row[part_a], row[part_b] = id_a, id_b
                row[-1] = 2
                row[-2] = candidate[int(id_a), 2] + candidate[int(id_b), 2] + score
                subset = np.vstack([subset, row])
    keep = [n for n in range(len(subset)) if subset[n][-1] >= 4 and subset[n][-2] / subset[n][-1] >= 0.4]
    return subset[keep]


def _overlap(subset: np.ndarray, n1: int, n2: int) -> bool:
    return bool(np.any((subset[n1][:-2] >= 0) & (subset[n2][:-2] >= 0)))


def estimate_body(heatmaps: np.ndarray, pafs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution heatmaps (H×W×19) and PAFs (H×W×38) -> (candidate, subset)."""
    peaks = find_peaks(heatmaps)
    candidate = np.array([p for part in peaks for p in part], dtype=np.float64).reshape(-1, 4)
    return candidate, assemble_people(connect_limbs(pafs, peaks), candidate)
