"""Percentile normalisation, computed on a bounded subsample and stored in the model bundle.

Prediction reuses the stored values, so a model sees the same intensity scale at training and
at inference whatever the dtype (uint8, uint16, float).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import RegconError
from .volume import Volume

_MAX_SAMPLES_PER_PLANE = 512 * 512


@dataclass(frozen=True)
class Normalization:
    """Per-channel linear map ``(x - low) / (high - low)`` from percentiles ``p_low``/``p_high``."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    p_low: float = 1.0
    p_high: float = 99.8

    def apply(self, block: np.ndarray) -> np.ndarray:
        """Normalise a (C, ...) float32 block in place and return it."""
        low = np.asarray(self.low, np.float32).reshape(-1, *([1] * (block.ndim - 1)))
        high = np.asarray(self.high, np.float32).reshape(low.shape)
        block -= low
        block /= high - low
        return block

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(tuple(float(v) for v in d["low"]), tuple(float(v) for v in d["high"]),
                   float(d.get("p_low", 1.0)), float(d.get("p_high", 99.8)))


def _subsample(volume: Volume, max_planes: int = 16) -> np.ndarray:
    """Read a bounded, evenly spread subsample of voxels as (C, N)."""
    c, z, y, x = volume.shape
    planes = np.unique(np.linspace(0, z - 1, min(z, max_planes)).round().astype(int))
    step = max(1, int(np.ceil(np.sqrt(y * x / _MAX_SAMPLES_PER_PLANE))))
    parts = [volume.read(int(k), slice(None, None, step), slice(None, None, step)).reshape(c, -1)
             for k in planes]
    return np.concatenate(parts, axis=1)


def fit_normalization(volumes: list[Volume], p_low: float = 1.0, p_high: float = 99.8,
                      name: str = "image") -> Normalization:
    """Compute percentiles per channel over a subsample of all ``volumes``.

    Raises RegconError for NaN/inf values or a channel without contrast.
    """
    channels = {v.shape[0] for v in volumes}
    if len(channels) != 1:
        raise RegconError(f"The images have different numbers of channels ({sorted(channels)}); use images with the same channels.")
    sample = np.concatenate([_subsample(v) for v in volumes], axis=1)
    if not np.isfinite(sample).all():
        raise RegconError(f"The {name} contains NaN or infinite values; replace them before training.")
    lo = np.percentile(sample, p_low, axis=1)
    hi = np.percentile(sample, p_high, axis=1)
    for ch in range(len(lo)):
        if hi[ch] - lo[ch] <= 1e-8:
            full_lo, full_hi = sample[ch].min(), sample[ch].max()
            if full_hi - full_lo <= 1e-8:
                raise RegconError(f"The {name} is constant (every pixel is {full_lo:g}" + (f" in channel {ch}" if len(lo) > 1 else "") + "); there is nothing to learn from it.")
            lo[ch], hi[ch] = full_lo, full_hi
    return Normalization(tuple(float(v) for v in lo), tuple(float(v) for v in hi), p_low, p_high)


def neighbour_contrast(volume: Volume, norm: Normalization, planes: int = 8) -> float:
    """RMS difference of the normalised intensity (channel mean) between neighbouring pixels, over up
    to ``planes`` evenly spaced planes: the image's own scale of "similar intensity", from which an
    edge-aware loss tells an edge from noise (Boykov & Jolly 2001 set their contrast term this way)."""
    _, nz, _, _ = volume.shape
    total, count = 0.0, 0
    for z in np.unique(np.linspace(0, nz - 1, min(planes, nz)).round().astype(int)):
        plane = norm.apply(volume.read(int(z), slice(None), slice(None))).mean(0)[0]
        for diff in (np.diff(plane, axis=0), np.diff(plane, axis=1)):
            total += float(np.square(diff, dtype=np.float64).sum())
            count += diff.size
    return float(np.sqrt(total / max(1, count)))


def check_finite(block: np.ndarray, name: str = "image") -> None:
    """Raise a clear error when a block read for prediction contains NaN/inf."""
    if not np.isfinite(block).all():
        raise RegconError(f"The {name} contains NaN or infinite values; replace them before predicting.")
