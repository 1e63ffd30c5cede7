"""USRegCon: ultrastructural region contrast (Lin et al., J South Med Univ 2023).

The U-Net softly divides each image into K regions by the similarity of its own features: a
learned K-way softmax region head on the last decoder feature (adaptive, no fixed grid). Region
pooling then gives each region

1. a first-order grayscale representation (mean and within-region variance of the view's
   intensities), trained with a grayscale loss: Chan-Vese-like within-region variance (the
   fraction of the intensity variance the regions leave unexplained) plus a hinge that keeps
   the means of regions present in an image at least ``delta`` apart (z-scored units);
2. a deep semantic representation (pooled decoder features + projection), trained with a
   contrastive loss: the same region under two augmented views is a positive pair (both views
   are pooled with one assignment map, warped by :func:`~napari_regcon.core.pretext.views.align`,
   so they cover the same tissue); other regions of the same image and of other images are
   negatives, except regions with the same index in other images (probably the same
   ultrastructure; left out of the denominator).

A balance term (KL of the batch's region usage to uniform) prevents the collapse of all pixels
into one region. The paper gives only the abstract; the formalisation follows
methods_spec.md §3.1. Encoder and decoder transfer; the region and projection heads do not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RegconError
from ..models import UNet
from .contrastive import (
    ContrastiveTask,
    mlp_head,
    multi_positive_info_nce,
    pool_regions,
)
from .views import align, correspondence

MIN_PIXELS_PER_REGION = 16


def grayscale_loss(image: torch.Tensor, assign: torch.Tensor, delta: float = 0.5, beta: float = 1.0,
                   min_mass: float = 0.005) -> tuple[torch.Tensor, dict[str, float]]:
    """Grayscale region loss of soft assignments ``assign`` (B, K, *S) on ``image`` (B, C, *S).

    Intensities are z-scored per image and channel, so the loss is scale-free:
    ``within`` = sum_k pi_k var_k (0 = piecewise constant regions, 1 = no better than one region);
    ``between`` = mean over pairs of regions present in the image (area > ``min_mass``) of
    ``[delta - |mu_k - mu_l|]_+``. Returns ``within + beta * between`` and both parts.
    """
    x = image.flatten(2).float()
    x = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-6)
    a = assign.flatten(2).float()
    n, k = a.shape[-1], a.shape[1]
    mu, mass = pool_regions(x, a)  # (B, K, C), (B, K)
    sq = ((x[:, None] - mu[..., None]) ** 2).mean(2)  # (B, K, N), mean over channels
    within = (a * sq).sum((1, 2)) / n
    diff = mu[:, :, None] - mu[:, None]
    dist = torch.sqrt((diff ** 2).mean(-1) + 1e-8)  # (B, K, K), RMS over channels
    present = (mass / n > min_mass).detach()
    upper = torch.ones(k, k, dtype=torch.bool, device=a.device).triu(1)
    pairs = present[:, :, None] & present[:, None, :] & upper
    hinge = F.relu(delta - dist)
    between = (hinge * pairs).sum() / pairs.sum().clamp_min(1)
    loss = within.mean() + beta * between
    return loss, {"within": float(within.mean().detach()), "between": float(between.detach())}


def balance_loss(assign: torch.Tensor) -> torch.Tensor:
    """KL divergence of the mean region usage over the whole batch (B, K, *S) to uniform (0 = balanced)."""
    k = assign.shape[1]
    usage = assign.transpose(0, 1).reshape(k, -1).float().mean(1)
    return (usage * torch.log(usage.clamp_min(1e-8) * k)).sum()


class RegConPretext(ContrastiveTask):
    """USRegCon region contrast: learned regions, grayscale loss + region contrast + balance."""

    name = "regcon"
    description = ("USRegCon: learn to divide images into regions that are uniform in grey level and "
                   "whose features match across augmented views (region-level contrast).")

    def __init__(self, n_regions: int = 8, tau: float = 0.1, delta: float = 0.5, beta: float = 1.0,
                 gray_weight: float = 1.0, balance_weight: float = 0.1, min_mass: float = 0.005,
                 embed_dim: int = 64, same_index_negatives: bool = False, view_fraction: float = 0.75) -> None:
        super().__init__(tau=tau, view_fraction=view_fraction)
        if int(n_regions) < 2:
            raise RegconError(f"regcon needs at least 2 regions (n_regions), not {n_regions}.")
        if delta < 0 or beta < 0 or gray_weight < 0 or balance_weight < 0:
            raise RegconError("regcon's delta, beta, gray_weight and balance_weight must not be negative.")
        self.n_regions = int(n_regions)
        self.delta, self.beta = float(delta), float(beta)
        self.gray_weight, self.balance_weight = float(gray_weight), float(balance_weight)
        self.min_mass = float(min_mass)
        self.embed_dim = int(embed_dim)
        self.same_index_negatives = bool(same_index_negatives)

    def build_heads(self, model: UNet) -> None:
        c0 = self.widths[0]
        conv = nn.Conv2d if self.ndim == 2 else nn.Conv3d
        self.region_head = conv(c0, self.n_regions, 1)
        self.proj = mlp_head(c0, max(c0, self.embed_dim), self.embed_dim)

    def check_input(self, shape_czyx: tuple[int, int, int, int], ndim: int) -> None:
        super().check_input(shape_czyx, ndim)
        c, z, y, x = shape_czyx
        pixels = y * x * (z if ndim == 3 else 1)
        if pixels < self.n_regions * MIN_PIXELS_PER_REGION:
            size = f"{z}x{y}x{x}" if ndim == 3 else f"{y}x{x}"
            raise RegconError(f"The image ({size} pixels) is too small to divide into {self.n_regions} regions for regcon; "
                              f"use a larger image or fewer regions (--param n_regions=...).")

    def prepare(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        v = self.views(batch["image"], rng)
        return {"x1": torch.from_numpy(v.x1), "x2": torch.from_numpy(v.x2),
                "idx12": torch.from_numpy(correspondence(v.g1, v.g2)),
                "idx21": torch.from_numpy(correspondence(v.g2, v.g1))}

    def assignments(self, model: UNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last decoder features and soft region assignments (B, K, *S) of images ``x``."""
        feat = model.features(x)[1][-1]
        return feat, self.region_head(feat).float().softmax(1)

    def semantic(self, fa: torch.Tensor, fb: torch.Tensor, assign: torch.Tensor, index: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """Region contrast between view a and view b pooled with view a's ``assign`` on the overlap."""
        fb_a, overlap = align(fb, index)
        w = assign * overlap.to(assign.dtype)
        ra, mass = pool_regions(fa, w)
        rb, _ = pool_regions(fb_a, w)
        b, k = mass.shape
        area = overlap.flatten(1).sum(1).to(mass.dtype).clamp_min(1)
        valid = (mass / area[:, None] > self.min_mass).detach().reshape(-1).repeat(2)
        emb = self.proj(torch.cat([ra.reshape(b * k, -1), rb.reshape(b * k, -1)]).float())
        item = torch.arange(b * k, device=emb.device).repeat(2)
        image, region = item // k, item % k
        pos = item[:, None] == item[None, :]
        pairs = valid[:, None] & valid[None, :]
        if not self.same_index_negatives:
            pairs = pairs & ~((region[:, None] == region[None, :]) & (image[:, None] != image[None, :]))
        return multi_positive_info_nce(emb, pos, pairs, self.tau, return_stats=True)

    def loss(self, model: UNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        self._check_bound(model)
        x1, x2 = batch["x1"], batch["x2"]
        b = x1.shape[0]
        feat, assign = self.assignments(model, torch.cat([x1, x2]))
        f1, f2, a1, a2 = feat[:b], feat[b:], assign[:b], assign[b:]
        g1, parts = grayscale_loss(x1, a1, self.delta, self.beta, self.min_mass)
        g2, _ = grayscale_loss(x2, a2, self.delta, self.beta, self.min_mass)
        gray = 0.5 * (g1 + g2)
        bal = balance_loss(assign)
        s1, st = self.semantic(f1, f2, a1, batch["idx12"])
        s2, _ = self.semantic(f2, f1, a2, batch["idx21"])
        sem = 0.5 * (s1 + s2)
        loss = sem + self.gray_weight * gray + self.balance_weight * bal
        logs = {"semantic": float(sem.detach()), "gray": float(gray.detach()), "balance": float(bal.detach()), **parts, **st}
        return loss, logs

    def params(self) -> dict[str, Any]:
        return {**super().params(), "n_regions": self.n_regions, "delta": self.delta, "beta": self.beta,
                "gray_weight": self.gray_weight, "balance_weight": self.balance_weight, "min_mass": self.min_mass,
                "embed_dim": self.embed_dim, "same_index_negatives": self.same_index_negatives}
