"""LRC: localized region contrast (Yan et al., MICCAI 2023), optionally on top of a global contrast.

Superpixels computed on the sampled patch (Felzenszwalb in 2D, SLIC supervoxels in 3D) define
local regions; they follow both augmented views exactly (same crop/flip/rotation). The
contrastive sampling loss draws ``regions_per_image`` superpixels seen by both views and
``pixels_per_region`` pixels of each in each view from the last decoder features; pixels of the
same superpixel of the same image are positives, pixels of other superpixels and of other
images negatives (``mode="pixels"``, methods_spec §3.4 option A). ``mode="regions"`` contrasts
region-pooled embeddings instead (DetCon-style, option B).

The paper adds LRC to an existing self-supervised method (MoCo in its figure); here the global
image-level term is a SimCLR contrast of the pooled bottleneck of the same two views, weighted
by ``global_weight`` (0 = LRC alone). Encoder and decoder transfer; heads do not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skimage.segmentation import felzenszwalb, slic

from ..errors import RegconError
from ..models import UNet
from .contrastive import (
    ContrastiveTask,
    global_vectors,
    mlp_head,
    multi_positive_info_nce,
    pool_regions,
    two_view_masks,
)

MODES = ("pixels", "regions")


def superpixels(patch: np.ndarray, scale: float = 100.0, sigma: float = 0.8, min_size: int = 50,
                voxels_per_segment: int = 12 ** 3, compactness: float = 0.1) -> np.ndarray:
    """Superpixel ids (0..n-1) of one normalised patch (C, Y, X) or (C, Z, Y, X).

    2D: Felzenszwalb-Huttenlocher graph segmentation (respects strong edges; ``scale`` larger =
    larger segments). 3D: SLIC supervoxels on the z-scored patch (Felzenszwalb in scikit-image is
    2D only, and per-slice segments would not have consistent ids across Z).
    """
    c = patch.shape[0]
    if patch.ndim == 3:
        img = patch[0] if c == 1 else np.moveaxis(patch, 0, -1)
        return felzenszwalb(img, scale=scale, sigma=sigma, min_size=min_size,
                            channel_axis=None if c == 1 else -1).astype(np.int64)
    vol = (patch - patch.mean(axis=(1, 2, 3), keepdims=True)) / (patch.std(axis=(1, 2, 3), keepdims=True) + 1e-6)
    n = max(2, int(np.prod(vol.shape[1:])) // int(voxels_per_segment))
    seg = slic(vol[0] if c == 1 else vol, n_segments=n, compactness=compactness,
               channel_axis=None if c == 1 else 0, start_label=0)
    return seg.astype(np.int64)


def sample_region_pixels(labels1: np.ndarray, labels2: np.ndarray, regions: int, pixels: int, min_pixels: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pick up to ``regions`` ids per image present in both views with >= ``min_pixels`` pixels in
    each, and ``pixels`` flat pixel positions of each in each view (with replacement when small).

    Returns (ids (B, R), pix1 (B, R, m), pix2 (B, R, m), valid (B, R)); unused slots are invalid.
    """
    b = labels1.shape[0]
    ids = np.zeros((b, regions), np.int64)
    pix = [np.zeros((b, regions, pixels), np.int64) for _ in range(2)]
    valid = np.zeros((b, regions), bool)
    for i in range(b):
        flat = [labels1[i].ravel(), labels2[i].ravel()]
        n = int(max(flat[0].max(), flat[1].max())) + 1
        counts = [np.bincount(f, minlength=n) for f in flat]
        cand = np.flatnonzero((counts[0] >= min_pixels) & (counts[1] >= min_pixels))
        chosen = rng.choice(cand, min(regions, len(cand)), replace=False) if len(cand) else cand
        for v in range(2):
            order = np.argsort(flat[v], kind="stable")
            starts = np.concatenate([[0], np.cumsum(counts[v])])
            for r, sid in enumerate(chosen):
                members = order[starts[sid]:starts[sid + 1]]
                pix[v][i, r] = rng.choice(members, pixels, replace=len(members) < pixels)
        ids[i, :len(chosen)] = chosen
        valid[i, :len(chosen)] = True
    return ids, pix[0], pix[1], valid


class LRCPretext(ContrastiveTask):
    """Localized region contrast on superpixels (+ an optional global image-level contrast)."""

    name = "lrc"
    description = ("LRC: contrast superpixel regions across two augmented views (local), optionally added to "
                   "an image-level contrast (global_weight).")

    def __init__(self, regions_per_image: int = 8, pixels_per_region: int = 16, tau: float = 0.1,
                 global_weight: float = 1.0, global_tau: float = 0.2, mode: str = "pixels",
                 scale: float = 100.0, sigma: float = 0.8, min_size: int = 50, min_pixels: int = 4,
                 voxels_per_segment: int = 12 ** 3, compactness: float = 0.1, embed_dim: int = 64,
                 global_dim: int = 128, view_fraction: float = 0.75) -> None:
        super().__init__(tau=tau, view_fraction=view_fraction)
        if mode not in MODES:
            raise RegconError(f"lrc mode must be one of {', '.join(MODES)}, not {mode!r}.")
        if int(regions_per_image) < 1 or int(pixels_per_region) < 1:
            raise RegconError("lrc needs regions_per_image >= 1 and pixels_per_region >= 1.")
        if global_weight < 0 or global_tau <= 0:
            raise RegconError("lrc's global_weight must not be negative and global_tau must be positive.")
        self.regions_per_image, self.pixels_per_region = int(regions_per_image), int(pixels_per_region)
        self.global_weight, self.global_tau = float(global_weight), float(global_tau)
        self.mode = mode
        self.scale, self.sigma, self.min_size = float(scale), float(sigma), int(min_size)
        self.min_pixels = int(min_pixels)
        self.voxels_per_segment, self.compactness = int(voxels_per_segment), float(compactness)
        self.embed_dim, self.global_dim = int(embed_dim), int(global_dim)

    def build_heads(self, model: UNet) -> None:
        c0, cz = self.widths[0], self.widths[-1]
        self.local_proj = mlp_head(c0, max(c0, self.embed_dim), self.embed_dim)
        self.global_proj = mlp_head(cz, cz, self.global_dim) if self.global_weight > 0 else None

    def superpixels(self, image: np.ndarray) -> np.ndarray:
        """Superpixel maps (B, *patch) of a batch of patches (B, C, *patch)."""
        return np.stack([superpixels(p, self.scale, self.sigma, self.min_size, self.voxels_per_segment,
                                     self.compactness) for p in image])

    def prepare(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        v = self.views(batch["image"], rng, labels=self.superpixels(batch["image"]))
        ids, pix1, pix2, valid = sample_region_pixels(v.labels1, v.labels2, self.regions_per_image,
                                                      self.pixels_per_region, self.min_pixels, rng)
        out = {"x1": torch.from_numpy(v.x1), "x2": torch.from_numpy(v.x2), "valid": torch.from_numpy(valid)}
        if self.mode == "pixels":
            out.update(pix1=torch.from_numpy(pix1), pix2=torch.from_numpy(pix2))
        else:
            out.update(sp1=torch.from_numpy(v.labels1), sp2=torch.from_numpy(v.labels2), ids=torch.from_numpy(ids))
        return out

    def local_embeddings(self, f1: torch.Tensor, f2: torch.Tensor, batch: dict[str, torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected local embeddings of both views, their region key and validity (rows)."""
        b, c = f1.shape[:2]
        r = self.regions_per_image
        if self.mode == "pixels":
            m = self.pixels_per_region
            rows = []
            for f, pix in ((f1, batch["pix1"]), (f2, batch["pix2"])):
                g = torch.gather(f.flatten(2), 2, pix.reshape(b, 1, r * m).expand(b, c, r * m))
                rows.append(g.transpose(1, 2).reshape(b * r * m, c))
            key = (torch.arange(b * r, device=f1.device)[:, None].expand(b * r, m).reshape(-1)).repeat(2)
            valid = batch["valid"][..., None].expand(b, r, m).reshape(-1).repeat(2)
        else:
            ids = batch["ids"]
            rows = []
            for f, sp in ((f1, batch["sp1"]), (f2, batch["sp2"])):
                masks = (sp[:, None] == ids.reshape(b, r, *([1] * (sp.ndim - 1)))).to(f.dtype)
                rows.append(pool_regions(f, masks)[0].reshape(b * r, c))
            key = torch.arange(b * r, device=f1.device).repeat(2)
            valid = batch["valid"].reshape(-1).repeat(2)
        emb = self.local_proj(torch.cat(rows).float())
        return emb, key, valid

    def loss(self, model: UNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        self._check_bound(model)
        x1, x2 = batch["x1"], batch["x2"]
        b = x1.shape[0]
        bottleneck, dec = model.features(torch.cat([x1, x2]))
        feat = dec[-1]
        emb, key, valid = self.local_embeddings(feat[:b], feat[b:], batch)
        local, stats = multi_positive_info_nce(emb, key[:, None] == key[None, :], valid, self.tau, return_stats=True)
        logs = {"local": float(local.detach()), **stats}
        loss = local
        if self.global_proj is not None:
            g = self.global_proj(global_vectors(bottleneck).float())
            glob = multi_positive_info_nce(g, two_view_masks(b, g.device), None, self.global_tau)
            loss = loss + self.global_weight * glob
            logs["global"] = float(glob.detach())
        return loss, logs

    def params(self) -> dict[str, Any]:
        return {**super().params(), "regions_per_image": self.regions_per_image,
                "pixels_per_region": self.pixels_per_region, "global_weight": self.global_weight,
                "global_tau": self.global_tau, "mode": self.mode, "scale": self.scale, "sigma": self.sigma,
                "min_size": self.min_size, "min_pixels": self.min_pixels,
                "voxels_per_segment": self.voxels_per_segment, "compactness": self.compactness,
                "embed_dim": self.embed_dim, "global_dim": self.global_dim}
