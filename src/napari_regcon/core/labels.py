"""Label conventions: sparse painting (0 = not annotated) and dense masks (0 = a class).

A :class:`LabelSet` maps the user's label values to class indices ``0..K-1`` and marks pixels
that carry no annotation with ``IGNORE`` so the loss skips them. Predictions map back to the
user's values, so a correction is painted with the same brush values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import RegconError

IGNORE = -1
_MAX_COORDS_PER_CLASS = 200_000


@dataclass
class LabelSet:
    """Annotated labels of one image, aligned with its spatial axes (YX or ZYX)."""

    data: Any
    dense: bool = False
    class_values: list[int] = field(default_factory=list)
    coords: dict[int, np.ndarray] = field(default_factory=dict)  # class index -> (N, 3) zyx
    painted_fraction: float = 1.0  # annotated share of the planes that carry any annotation
    counts: dict[int, int] = field(default_factory=dict)  # class index -> annotated pixels
    plane_share: float = 1.0  # share of the image's planes that carry any annotation

    @property
    def shares(self) -> np.ndarray:
        """Each class's share of the annotated pixels (class order; equal shares if not counted)."""
        n = np.array([self.counts.get(i, 0) for i in range(self.n_classes)], np.float64)
        return n / n.sum() if n.sum() > 0 else np.full(self.n_classes, 1.0 / max(1, self.n_classes))

    @property
    def n_classes(self) -> int:
        return len(self.class_values)

    @property
    def lut_offset(self) -> int:
        return 0 if self.dense else 1

    def encode(self, block: np.ndarray) -> np.ndarray:
        """Map a block of user values to class indices, unannotated to IGNORE (int64)."""
        out = np.full(block.shape, IGNORE, np.int64)
        for idx, value in enumerate(self.class_values):
            out[block == value] = idx
        return out

    def read(self, z: slice, y: slice, x: slice) -> np.ndarray:
        """Read a (Z, Y, X) block of encoded targets."""
        if len(self.data.shape) == 3:
            block = np.asarray(self.data[z, y, x])
        else:
            block = np.asarray(self.data[y, x])[None]
        return self.encode(block)


def build_labelset(labels: Any, spatial_shape: tuple[int, ...], dense: bool = False,
                   seed: int = 0) -> LabelSet:
    """Check ``labels`` against the image and index the annotated pixels of each class.

    Raises RegconError for a shape mismatch, non-integer values, no annotation or one class.
    """
    shape = tuple(int(s) for s in labels.shape)
    if shape != tuple(spatial_shape):
        raise RegconError(f"The labels have shape {shape} but the image has spatial shape {tuple(spatial_shape)}; they must match pixel for pixel.")
    dtype = np.dtype(labels.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)):
        raise RegconError(f"The labels must be integers (got {dtype}); 0 means not annotated and every value > 0 is a class.")
    rng = np.random.default_rng(seed)
    planes = shape[0] if len(shape) == 3 else 1
    per_value: dict[int, list[np.ndarray]] = {}
    counts: dict[int, int] = {}
    painted_planes = 0
    for zi in range(planes):
        plane = np.asarray(labels[zi] if len(shape) == 3 else labels)
        values, cnt = np.unique(plane, return_counts=True)
        painted_planes += int(dense or bool(values.any()))
        for v, n in zip(values.tolist(), cnt.tolist()):
            if not dense and v == 0:
                continue
            if v < 0:
                raise RegconError(f"The labels contain the negative value {v}; use 0 for not annotated and positive values for classes.")
            yy, xx = np.nonzero(plane == v)
            if len(yy) > _MAX_COORDS_PER_CLASS // 4:
                keep = rng.choice(len(yy), _MAX_COORDS_PER_CLASS // 4, replace=False)
                yy, xx = yy[keep], xx[keep]
            per_value.setdefault(v, []).append(np.stack([np.full_like(yy, zi), yy, xx], 1))
            counts[v] = counts.get(v, 0) + n
    values = sorted(per_value)
    if not values:
        raise RegconError("The labels contain no annotated pixel: paint at least two classes (0 means not annotated).")
    if len(values) < 2:
        hint = "" if dense else " (0 is not annotated, so paint the background as a class of its own)"
        raise RegconError(f"The labels contain a single class ({values[0]}); paint at least two classes{hint}.")
    coords = {}
    for idx, v in enumerate(values):
        c = np.concatenate(per_value[v])
        if len(c) > _MAX_COORDS_PER_CLASS:
            c = c[rng.choice(len(c), _MAX_COORDS_PER_CLASS, replace=False)]
        coords[idx] = c
    plane_size = int(np.prod(shape[-2:]))
    fraction = sum(counts.values()) / max(1, painted_planes * plane_size)
    return LabelSet(labels, dense, [int(v) for v in values], coords, float(fraction),
                    {idx: int(counts[v]) for idx, v in enumerate(values)}, painted_planes / planes)
