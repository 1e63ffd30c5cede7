"""Masked image modelling (MIM) for 2D and 3D, single- and multi-channel microscopy.

SimMIM-style on the U-Net (the recipe of the two-photon MIM paper, ported to a conv net): a
fraction ``ratio`` of ``cell``-sized blocks of the input is set to zero and the network's head
regresses the original normalised intensities; the loss (MSE) counts only masked voxels, so
copying the visible input earns nothing. Encoder and decoder transfer.

Masking strategies (``mask``, combinable as ``"intensity,channel"``):

- ``random``: every cell is equally likely to be hidden.
- ``intensity``: cells are drawn without replacement with probability proportional to their
  mean intensity (Gumbel-top-k; ``temperature`` flattens or sharpens it), so bright foreground
  structures (vessels, neurons) are hidden more often than empty background and the network
  must reconstruct structure rather than background.
- ``channel``: each channel gets its own independent mask, so a voxel hidden in one channel is
  often visible in another and the network learns inter-channel correlations.

Cells are per axis (e.g. ``(4, 16, 16)`` in ZYX); a single number in 3D becomes a physically
near-isotropic cell when the voxel size is known (``voxel_size``), else ``(n // 4, n, n)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..augment import geometric
from ..errors import RegconError
from ..models import UNet
from .base import Task

MASK_MODES = ("random", "intensity", "channel")


def _grid(shape: tuple[int, ...], cell: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-(-s // c) for s, c in zip(shape, cell))


def _expand(grid_mask: np.ndarray, cell: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Blow a per-cell boolean grid up to a voxel mask of ``shape``."""
    mask = grid_mask
    for ax, c in enumerate(cell):
        mask = np.repeat(mask, c, axis=ax)
    return mask[tuple(slice(0, s) for s in shape)]


def _n_masked(n: int, ratio: float) -> int:
    return int(min(n, max(1, round(ratio * n))))


def random_cell_mask(shape: tuple[int, ...], cell: tuple[int, ...], ratio: float,
                     rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of ``shape`` made of ``cell``-sized blocks, ``round(ratio * n)`` of them set."""
    grid = _grid(shape, cell)
    n = int(np.prod(grid))
    flat = np.zeros(n, bool)
    flat[rng.choice(n, _n_masked(n, ratio), replace=False)] = True
    return _expand(flat.reshape(grid), cell, shape)


def cell_means(image: np.ndarray, cell: tuple[int, ...]) -> np.ndarray:
    """Mean of ``image`` (C, *spatial) over each ``cell`` block -> (C, *grid); partial border cells count their voxels only."""
    spatial = image.shape[1:]
    grid = _grid(spatial, cell)
    pad = [(0, 0)] + [(0, g * c - s) for g, c, s in zip(grid, cell, spatial)]
    total = np.pad(image.astype(np.float64), pad)
    count = np.pad(np.ones(spatial), pad[1:])
    split = (image.shape[0],) + tuple(x for g, c in zip(grid, cell) for x in (g, c))
    axes = tuple(range(2, 2 * len(cell) + 1, 2))
    sums = total.reshape(split).sum(axis=axes)
    counts = count.reshape(split[1:]).sum(axis=tuple(a - 1 for a in axes))
    return sums / counts


def intensity_cell_mask(score: np.ndarray, cell: tuple[int, ...], shape: tuple[int, ...], ratio: float,
                        rng: np.random.Generator, temperature: float = 1.0, eps: float = 0.01) -> np.ndarray:
    """Hide ``round(ratio * n)`` cells drawn without replacement with P(cell) ∝ (score - min + ε)^(1/T).

    ``score`` is the per-cell mean intensity (the grid). Sampling is Gumbel-top-k on the
    log-weights, which is exactly sequential sampling without replacement; ``ε`` is relative to
    the score range so the darkest cell keeps a small chance, and a larger temperature ``T``
    moves towards uniform (random) masking.
    """
    s = score.ravel().astype(np.float64)
    span = float(s.max() - s.min())
    logw = np.log(s - s.min() + eps * span + 1e-12) / float(temperature)
    keys = logw + rng.gumbel(size=s.shape)
    k = _n_masked(s.size, ratio)
    flat = np.zeros(s.size, bool)
    flat[np.argpartition(-keys, k - 1)[:k]] = True
    return _expand(flat.reshape(score.shape), cell, shape)


def parse_mask_modes(mask: str | Sequence[str]) -> tuple[str, ...]:
    """Read ``"intensity,channel"`` (or a list) into a validated tuple of masking modes."""
    items = mask.replace("+", ",").split(",") if isinstance(mask, str) else list(mask)
    modes = tuple(sorted({m.strip().lower() for m in items if m.strip()}))
    bad = [m for m in modes if m not in MASK_MODES]
    if bad or not modes:
        raise RegconError(f"Unknown mask strategy {mask!r}; use random, intensity, channel or a combination such as intensity,channel.")
    if "random" in modes and "intensity" in modes:
        raise RegconError("--mask cannot be both random and intensity; choose one (optionally with channel).")
    return modes


def parse_cell(value: int | str | Sequence[int]) -> int | tuple[int, ...]:
    """Read a mask cell size: ``16`` or ``"4,16,16"`` (per axis, Z first)."""
    if isinstance(value, str):
        try:
            parts = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            raise RegconError(f"Cannot read the mask patch size {value!r}; write e.g. 16 or 4,16,16.") from None
    elif isinstance(value, (int, np.integer)):
        parts = [int(value)]
    else:
        parts = [int(v) for v in value]
    if not parts or any(p < 1 for p in parts):
        raise RegconError(f"The mask patch size {value!r} must be positive numbers, e.g. 16 or 4,16,16.")
    return parts[0] if len(parts) == 1 else tuple(parts)


def anisotropic_cell(size: int, voxel_size: Sequence[float] | None) -> tuple[int, int, int]:
    """A 3D cell of ``size`` pixels in Y and X and the Z depth covering the same physical length.

    Without a voxel size it falls back to ``size // 4`` planes (typical two-photon / EM anisotropy).
    """
    if voxel_size is not None and len(voxel_size) == 3 and all(float(v) > 0 for v in voxel_size):
        vz, vy, vx = (float(v) for v in voxel_size)
        z = max(1, int(round(size * min(vy, vx) / vz)))
    else:
        z = max(1, size // 4)
    return (z, size, size)


class MIMPretext(Task):
    """Masked image modelling with random, intensity-based and/or channel-separated cell masking.

    Parameters
    ----------
    ratio
        Fraction of cells hidden (per channel with ``channel`` masking), strictly between 0 and 1.
    patch
        Mask cell size: one number (square in 2D, see :func:`anisotropic_cell` in 3D) or per axis.
    mask
        ``random``, ``intensity``, ``channel`` or a combination such as ``intensity,channel``.
    temperature
        Intensity masking: 1 samples cells ∝ mean intensity, larger is flatter, smaller greedier.
    voxel_size
        (Z, Y, X) physical voxel size, used to make a single-number 3D cell physically isotropic.
    """

    name = "mim"
    kind = "pretrained"
    description = ("Masked image modelling: hide patches and learn to fill them in (fast, robust default); "
                   "--mask intensity hides bright structures more often, --mask channel masks each channel separately.")
    weight_decay = 0.05  # masked autoencoders train with a stronger weight decay than the contrastive tasks

    def __init__(self, ratio: float = 0.6, patch: int | str | Sequence[int] = 16, mask: str | Sequence[str] = "random",
                 temperature: float = 1.0, voxel_size: Sequence[float] | None = None) -> None:
        super().__init__()
        if not 0.0 < float(ratio) < 1.0:
            raise RegconError(f"The mask ratio must be between 0 and 1 (exclusive), not {ratio}.")
        if not float(temperature) > 0:
            raise RegconError(f"The masking temperature must be positive, not {temperature}.")
        self.ratio = float(ratio)
        self.patch = parse_cell(patch)
        self.modes = parse_mask_modes(mask)
        self.temperature = float(temperature)
        self.voxel_size = tuple(float(v) for v in voxel_size) if voxel_size is not None else None

    @property
    def by_intensity(self) -> bool:
        return "intensity" in self.modes

    @property
    def per_channel(self) -> bool:
        return "channel" in self.modes

    def check_input(self, shape_czyx: tuple[int, int, int, int], ndim: int) -> None:
        if self.per_channel and shape_czyx[0] < 2:
            raise RegconError("Channel-separated masking (--mask channel) needs a multi-channel image, but this image has 1 channel; use --mask random or intensity, or give --channel-axis.")
        if not isinstance(self.patch, int) and len(self.patch) != ndim:
            raise RegconError(f"The mask patch size {self.patch} has {len(self.patch)} values but the model is {ndim}D; give 1 or {ndim} values.")

    def cell_size(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """The mask cell used for patches of ``spatial`` size (clipped to the patch)."""
        if isinstance(self.patch, int):
            cell = anisotropic_cell(self.patch, self.voxel_size) if len(spatial) == 3 else (self.patch,) * 2
        else:
            cell = tuple(self.patch)
        if len(cell) != len(spatial):
            raise RegconError(f"The mask patch size {cell} does not match {len(spatial)}D patches.")
        return tuple(min(c, s) for c, s in zip(cell, spatial))

    def make_mask(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Boolean mask (C, *spatial) for one normalised sample (C, *spatial)."""
        spatial = image.shape[1:]
        cell = self.cell_size(spatial)
        n_masks = image.shape[0] if self.per_channel else 1
        if self.by_intensity:
            means = cell_means(image, cell)
            scores = means if self.per_channel else means.max(0, keepdims=True)
            masks = [intensity_cell_mask(scores[c], cell, spatial, self.ratio, rng, self.temperature)
                     for c in range(n_masks)]
        else:
            masks = [random_cell_mask(spatial, cell, self.ratio, rng) for _ in range(n_masks)]
        return np.broadcast_to(np.stack(masks), image.shape)

    def prepare(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        image, _ = geometric(batch["image"], None, rng)
        masks = np.stack([self.make_mask(img, rng) for img in image])
        masked = np.where(masks, np.float32(0), image)
        return {"input": torch.from_numpy(masked), "target": torch.from_numpy(image), "mask": torch.from_numpy(masks)}

    def loss(self, model: UNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        recon = model(batch["input"]).float()
        return masked_mse(recon, batch["target"], batch["mask"]), {}

    def params(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "patch": self.patch if isinstance(self.patch, int) else list(self.patch),
                "mask": ",".join(self.modes), "temperature": self.temperature,
                "voxel_size": list(self.voxel_size) if self.voxel_size else None}


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked voxels (and channels) only; 0 when nothing is masked."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)
