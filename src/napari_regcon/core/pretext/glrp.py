"""GLRP: global and local contrast by relative position (Zhao et al., IJIST 2024).

Global level: the pooled encoder bottleneck (plus a projection head) of patches from the same
stack at close positions are positives, far ones negatives (PCL-style multi-positive InfoNCE,
soft weights falling with the distance). The sampler draws patches in groups that share the Y/X
window and lie at most ``max_dz`` planes apart (neighbouring slices in 2D, shifted sub-volumes
in 3D), so positional positives show overlapping tissue; microscopy stacks are not aligned
across specimens, so positives never cross stacks (methods_spec §3.2, microscopy adaptation).
Same-stack patches just beyond the positive range are left out of the denominator.

Local level: the full-resolution decoder feature (so the whole decoder trains and transfers;
``local_stride`` picks a coarser decoder output, Chaitanya-style) is average-pooled into cells of
``cell`` feature pixels (8 px by default); a cell is positive with the cell showing the same
place in the other view of the patch (exact, via the views' geometry) and, in 2D, in the
neighbouring slices of its group (serial sections are roughly registered); all other cells are
negatives. Needs a stack: a single 2D image is an error.
Encoder and decoder transfer. The paper's fully connected CRF post-processing is
:func:`napari_regcon.core.postprocess.crf_refine` (``napari-regcon predict --crf``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import RegconError
from ..models import UNet
from .contrastive import (
    ContrastiveTask,
    global_vectors,
    lcm,
    mlp_head,
    multi_positive_info_nce,
)
from .views import ViewGeometry, parent_coords


def position_masks(index: np.ndarray, z: np.ndarray, dz: float, yx: np.ndarray | None = None,
                   window: tuple[int, int] | None = None, uncertain: float = 3.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positional positives between B patches.

    ``index`` (B,) image of each patch, ``z`` (B,) its Z position (planes, or relative 0..1),
    ``dz`` the largest positive distance, optional ``yx`` (B, 2) window corners and ``window``
    the patch's (Y, X) size: windows must overlap by at least half in Y and in X to be positive.
    Returns (positive (B, B) bool, excluded (B, B) bool: same stack, overlapping window and within
    ``uncertain * dz`` but not positive, left out of the denominator, weight (B, B) float:
    1 - d / (2 dz) for positives). The diagonal is positive.
    """
    same = index[:, None] == index[None, :]
    d = np.abs(z[:, None] - z[None, :]).astype(np.float64)
    near = same.copy()
    touch = same.copy()
    if yx is not None and window is not None:
        dyx = np.abs(yx[:, None, :] - yx[None, :, :])
        near &= (dyx[..., 0] * 2 <= window[0]) & (dyx[..., 1] * 2 <= window[1])
        touch &= (dyx[..., 0] < window[0]) & (dyx[..., 1] < window[1])
    pos = near & (d <= dz + 1e-9)
    excluded = touch & (d <= uncertain * dz + 1e-9) & ~pos
    weight = np.where(pos, 1.0 - d / (2.0 * max(dz, 1e-9)), 0.0)
    return pos, excluded, weight.astype(np.float32)


class GLRPPretext(ContrastiveTask):
    """Global (relative position) + local (aligned cells) contrast over stacks."""

    name = "glrp"
    description = ("GLRP: neighbouring slices of a stack are positives at the image level, the same place in "
                   "two views (and neighbouring slices) at the local level; needs a Z stack.")

    def __init__(self, tau: float = 0.1, local_weight: float = 1.0, slices_per_window: int = 2,
                 max_dz: int | None = None, delta: float = 0.1, soft: bool = True, local_cells: int = 32,
                 local_stride: int = 1, cell: int = 8, global_dim: int = 128, embed_dim: int = 64,
                 view_fraction: float = 0.75) -> None:
        super().__init__(tau=tau, view_fraction=view_fraction)
        if int(slices_per_window) < 1 or int(local_cells) < 1 or int(cell) < 1 or int(local_stride) < 1:
            raise RegconError("glrp needs slices_per_window, local_cells, cell and local_stride >= 1.")
        if max_dz is not None and int(max_dz) < 0 or delta <= 0 or local_weight < 0:
            raise RegconError("glrp needs max_dz >= 0, delta > 0 and local_weight >= 0.")
        self.local_weight = float(local_weight)
        self.slices_per_window = int(slices_per_window)
        self.max_dz = None if max_dz is None else int(max_dz)
        self.delta, self.soft = float(delta), bool(soft)
        self.local_cells, self.local_stride, self.cell = int(local_cells), int(local_stride), int(cell)
        self.global_dim, self.embed_dim = int(global_dim), int(embed_dim)
        self.level, self.stride, self.zstride = 0, 1, 1

    @property
    def dz(self) -> int:
        """Largest positive Z distance in planes (default 2 in 2D, 1 in 3D)."""
        return self.max_dz if self.max_dz is not None else (2 if self.ndim == 2 else 1)

    @property
    def sample_options(self) -> dict[str, int]:
        """Ask the sampler for groups of neighbouring slices sharing a Y/X window."""
        return {"group": self.slices_per_window, "max_dz": self.dz}

    def build_heads(self, model: UNet) -> None:
        depth = model.config.depth
        strides = [2 ** (depth - 1 - i) for i in range(depth)]  # decoder outputs, coarse to fine
        self.level = next(i for i, s in enumerate(strides) if s <= self.local_stride)
        self.stride = strides[self.level]
        level_res = depth - 1 - self.level  # number of poolings above this decoder output
        self.zstride = 2 ** sum(bool(p) for p in model.config.pool_z[:level_res]) if self.ndim == 3 else 1
        c_local = model.widths[depth - 1 - self.level]
        self.global_proj = mlp_head(self.widths[-1], self.widths[-1], self.global_dim)
        self.local_proj = mlp_head(c_local, max(c_local, self.embed_dim), self.embed_dim)

    @property
    def cell_px(self) -> int:
        """Side of a local cell in pixels."""
        return self.stride * self.cell

    @property
    def view_multiple(self) -> int:
        return lcm(self.divisor, self.cell_px)

    def check_input(self, shape_czyx: tuple[int, int, int, int], ndim: int) -> None:
        super().check_input(shape_czyx, ndim)
        if shape_czyx[1] < 2:
            raise RegconError("glrp contrasts slices by their position in a stack, but this image is a single 2D plane; "
                              "give a Z stack (ZYX) or choose another --method.")

    def _global_masks(self, batch: dict[str, np.ndarray], patch_yx: tuple[int, int]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if "origin" in batch:
            o = batch["origin"]
            return position_masks(batch["index"], o[:, 0], self.dz, o[:, 1:], patch_yx)
        return position_masks(batch["index"], batch["zpos"], self.delta)

    def _local_rows(self, batch: dict[str, np.ndarray], g1: ViewGeometry, g2: ViewGeometry, zcells: int,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Sample up to ``local_cells`` places per registered window seen by at least two of its
        views; return the rows (item, cell index) and their positive and denominator masks.

        Rows at the same place of the same local group (the two views of a patch; in 2D also its
        neighbouring slices) are positives. Rows of the same stack closer than a cell to each other
        in Y/X and within 3 ``dz`` in Z but not positive (overlapping windows, Z-shifted 3D
        sub-volumes) are left out of the denominator.
        """
        b = len(g1.offset)
        cp = self.cell_px
        o = batch["origin"] if "origin" in batch else np.zeros((b, 3), np.int64)
        index = batch["index"] if "origin" in batch else np.arange(b)
        _, wid = np.unique(np.stack([index, o[:, 1], o[:, 2]], 1), axis=0, return_inverse=True)
        wid = wid.reshape(-1)
        gid = wid if self.ndim == 2 else np.arange(b)
        grid = (int(batch["image"].shape[-2]) // cp, int(batch["image"].shape[-1]) // cp)
        coords = [[parent_coords(g, i, cp) for i in range(b)] for g in (g1, g2)]
        rows: list[np.ndarray] = []  # columns: item, cell, key, group, image, z, y, x
        for w in np.unique(wid):
            members = [(v, i) for i in np.flatnonzero(wid == w) for v in range(2)]
            cover = np.zeros(grid, np.int64)
            for v, i in members:
                cover[coords[v][i][0], coords[v][i][1]] += 1
            cand = np.flatnonzero(cover.ravel() >= 2)
            chosen = rng.choice(cand, min(self.local_cells, len(cand)), replace=False)
            zc = rng.integers(0, zcells, len(chosen))
            for v, i in members:
                flat_parent = (coords[v][i][0] * grid[1] + coords[v][i][1]).ravel()
                lut = np.full(grid[0] * grid[1], -1, np.int64)
                lut[flat_parent] = np.arange(flat_parent.size)
                where = lut[chosen]
                ok = where >= 0
                place = chosen[ok]
                rows.append(np.stack([
                    np.full(ok.sum(), v * b + i), zc[ok] * flat_parent.size + where[ok],
                    (w * zcells + zc[ok]) * grid[0] * grid[1] + place, np.full(ok.sum(), gid[i]),
                    np.full(ok.sum(), index[i]), o[i, 0] + zc[ok] * self.zstride,
                    o[i, 1] + (place // grid[1]) * cp, o[i, 2] + (place % grid[1]) * cp], 1))
        item, cell, key, group, image, z, y, x = np.concatenate(rows).T
        pos = (key[:, None] == key[None, :]) & (group[:, None] == group[None, :])
        near = ((image[:, None] == image[None, :]) & (np.abs(y[:, None] - y[None, :]) < cp)
                & (np.abs(x[:, None] - x[None, :]) < cp) & (np.abs(z[:, None] - z[None, :]) <= 3 * self.dz + self.zstride - 1))
        return {"litem": item, "lcell": cell, "lpos": pos, "lpairs": pos | ~near}

    def prepare(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        image = batch["image"]
        v = self.views(image, rng)
        pos, excluded, weight = self._global_masks(batch, image.shape[-2:])
        tile = lambda a: np.tile(a, (2, 2))  # noqa: E731  items ordered [view 1 of all, view 2 of all]
        zcells = image.shape[2] // self.zstride if self.ndim == 3 else 1
        local = self._local_rows(batch, v.g1, v.g2, zcells, rng)
        out = {"x1": v.x1, "x2": v.x2, "gpos": tile(pos), "gpairs": ~tile(excluded),
               "gweight": tile(weight) if self.soft else tile(pos).astype(np.float32), **local}
        return {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in out.items()}

    def loss(self, model: UNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        self._check_bound(model)
        x1, x2 = batch["x1"], batch["x2"]
        bottleneck, dec = model.features(torch.cat([x1, x2]))
        g = self.global_proj(global_vectors(bottleneck).float())
        glob, stats = multi_positive_info_nce(g, batch["gpos"], batch["gpairs"], self.tau,
                                              pos_weight=batch["gweight"], return_stats=True)
        feat = dec[self.level]
        k = (1, self.cell, self.cell)[-(feat.ndim - 2):]
        cells = (F.avg_pool2d if self.ndim == 2 else F.avg_pool3d)(feat, k, k).flatten(2)  # (2B, C, N)
        rows = cells[batch["litem"], :, batch["lcell"]]
        emb = self.local_proj(rows.float())
        local, lstats = multi_positive_info_nce(emb, batch["lpos"], batch["lpairs"], self.tau, return_stats=True)
        loss = glob + self.local_weight * local
        logs = {"global": float(glob.detach()), "local": float(local.detach()), **stats,
                **{f"local_{k}": v for k, v in lstats.items()}}
        return loss, logs

    def params(self) -> dict[str, Any]:
        return {**super().params(), "local_weight": self.local_weight, "slices_per_window": self.slices_per_window,
                "max_dz": self.max_dz, "delta": self.delta, "soft": self.soft, "local_cells": self.local_cells,
                "local_stride": self.local_stride, "cell": self.cell, "global_dim": self.global_dim,
                "embed_dim": self.embed_dim}
