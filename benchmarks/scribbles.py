"""Simulated painting: short brush strokes inside each class, as a person would scribble.

Strokes follow the medial axis (skeleton) of each class region, so a stroke in a cell runs
through its interior and a stroke on a membrane runs along it; the brush footprint is clipped
to the class, so scribbles never cross a boundary. Fixed seed, fixed pixel budget.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk, skeletonize

_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _trace(skel: np.ndarray, start: tuple[int, int], length: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Walk ``length`` pixels along the skeleton from ``start``, keeping the heading when possible."""
    path, seen = [start], {start}
    heading = np.array(_NEIGHBOURS[int(rng.integers(8))], float)
    y, x = start
    h, w = skel.shape
    for _ in range(length - 1):
        best, best_score = None, -np.inf
        for dy, dx in _NEIGHBOURS:
            ny, nx = y + dy, x + dx
            if 0 <= ny < h and 0 <= nx < w and skel[ny, nx] and (ny, nx) not in seen:
                score = float(np.dot(heading, (dy, dx)) / np.hypot(dy, dx))
                if score > best_score:
                    best, best_score = (ny, nx), score
        if best is None:
            break
        heading = 0.6 * heading + 0.4 * np.array([best[0] - y, best[1] - x], float)
        y, x = best
        path.append(best)
        seen.add(best)
    return path


def scribble(truth: np.ndarray, fraction: float = 0.01, seed: int = 0, radius: dict[int, int] | None = None,
             length: tuple[int, int] = (25, 60)) -> np.ndarray:
    """Scribbles on a 2D class map ``truth`` (values > 0 are classes, e.g. 1 cell, 2 membrane).

    Returns a uint8 label image with 0 = not annotated and about ``fraction`` of the pixels
    painted, split equally between the classes, as strokes of ``length`` skeleton pixels with
    a disk brush of ``radius[class]`` pixels (default 2 for the first class, 1 for the others).
    """
    rng = np.random.default_rng(seed)
    classes = [int(v) for v in np.unique(truth) if v > 0]
    radius = radius or {c: (2 if i == 0 else 1) for i, c in enumerate(classes)}
    budget = int(round(fraction * truth.size / len(classes)))
    out = np.zeros(truth.shape, np.uint8)
    for c in classes:
        region = truth == c
        skel = skeletonize(region)
        starts = np.argwhere(skel)
        painted = 0
        for _ in range(10_000):
            if painted >= budget or len(starts) == 0:
                break
            start = tuple(int(v) for v in starts[int(rng.integers(len(starts)))])
            path = _trace(skel, start, int(rng.integers(*length)), rng)
            stroke = np.zeros_like(region)
            stroke[tuple(np.array(path).T)] = True
            stroke = ndi.binary_dilation(stroke, disk(radius[c])) & region & (out == 0)
            take = np.argwhere(stroke)
            if painted + len(take) > budget:  # the last stroke stops at the budget
                take = take[: budget - painted]
            out[tuple(take.T)] = c
            painted += len(take)
    return out
