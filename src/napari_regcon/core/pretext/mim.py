"""Masked image modelling (MIM): hide patches of the input, reconstruct them.

SimMIM-style on the U-Net: a fraction ``ratio`` of ``patch``-sized cells of the input is set to
zero and the network's head regresses the original normalised intensities; the loss (MSE) counts
only masked voxels, so copying the visible input earns nothing. Encoder and decoder transfer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from napari_regcon.core.augment import geometric
from napari_regcon.core.errors import RegconError
from napari_regcon.core.models import UNet
from napari_regcon.core.pretext.base import Task


def random_cell_mask(shape: tuple[int, ...], cell: tuple[int, ...], ratio: float,
                     rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of ``shape`` made of ``cell``-sized blocks, exactly ``round(ratio * n)`` set."""
    grid = tuple(-(-s // c) for s, c in zip(shape, cell))
    n = int(np.prod(grid))
    k = int(round(ratio * n))
    flat = np.zeros(n, bool)
    flat[rng.choice(n, k, replace=False)] = True
    mask = flat.reshape(grid)
    for ax, c in enumerate(cell):
        mask = np.repeat(mask, c, axis=ax)
    return mask[tuple(slice(0, s) for s in shape)]


class MIMPretext(Task):
    """Masked image modelling with random cell masking."""

    name = "mim"
    kind = "pretrained"
    description = "Masked image modelling: hide random patches and learn to fill them in (fast, robust default)."

    def __init__(self, ratio: float = 0.6, patch: int | tuple[int, ...] = 16) -> None:
        super().__init__()
        if not 0.0 < ratio < 1.0:
            raise RegconError(f"The mask ratio must be between 0 and 1 (exclusive), not {ratio}.")
        self.ratio = float(ratio)
        self.patch = patch

    def _cell(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if isinstance(self.patch, int):
            cell = (max(1, self.patch // 4), self.patch, self.patch) if len(spatial) == 3 else (self.patch,) * 2
        else:
            cell = tuple(self.patch)
        if len(cell) != len(spatial):
            raise RegconError(f"The mask patch size {cell} does not match {len(spatial)}D patches.")
        return tuple(min(c, s) for c, s in zip(cell, spatial))

    def prepare(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        image, _ = geometric(batch["image"], None, rng)
        spatial = image.shape[2:]
        cell = self._cell(spatial)
        masks = np.stack([random_cell_mask(spatial, cell, self.ratio, rng) for _ in range(image.shape[0])])
        masks = np.broadcast_to(masks[:, None], image.shape).copy()
        masked = np.where(masks, np.float32(0), image)
        return {"input": torch.from_numpy(masked), "target": torch.from_numpy(image), "mask": torch.from_numpy(masks)}

    def loss(self, model: UNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        recon = model(batch["input"]).float()
        return masked_mse(recon, batch["target"], batch["mask"]), {}

    def params(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "patch": list(self.patch) if not isinstance(self.patch, int) else self.patch}


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked voxels only (0 when nothing is masked)."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)
