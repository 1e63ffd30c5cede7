"""Pieces shared by the contrastive pretexts (regcon, lrc, glrp).

- :func:`multi_positive_info_nce`: one vectorised SupCon/InfoNCE over an embedding matrix with a
  boolean positive mask; every loss of these methods is a call to it with a different mask
  (methods_spec §1.2).
- :func:`pool_regions`: (soft) region pooling of features with per-region weights.
- :class:`ContrastiveTask`: a :class:`Task` whose heads are sized by the network they train
  (built in :meth:`ContrastiveTask.bind`, which the training loop calls before making the
  optimiser) and whose views are cut at multiples of the network's divisor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RegconError
from ..models import UNet
from .base import Task
from .views import Views, make_views

_NEG = -1e9


def multi_positive_info_nce(emb: torch.Tensor, pos_mask: torch.Tensor, valid_mask: torch.Tensor | None = None,
                            tau: float = 0.1, pos_weight: torch.Tensor | None = None,
                            return_stats: bool = False) -> Any:
    """Multi-positive InfoNCE (SupCon) over ``emb`` (M, d), L2-normalised here.

    For each anchor i: ``-sum_p w_ip log(exp(s_ip/tau) / sum_{a in A(i)} exp(s_ia/tau)) / sum_p w_ip``
    where the positives p are ``pos_mask[i]`` and the candidates A(i) are the pairs allowed by
    ``valid_mask``: None (all), (M,) bool (rows taking part at all) or (M, M) bool (pairs in the
    denominator; use it to leave out uncertain negatives). The diagonal never counts; anchors
    without a positive are skipped; the loss is the mean over the others (0 if there are none).
    ``pos_weight`` (M, M) gives soft weights to positives. With ``return_stats`` also returns a
    dict (detached): mean cosine similarity of positive and of negative pairs, ``top1`` the
    fraction of anchors whose most similar candidate is a positive, and its chance level.
    """
    e = F.normalize(emb.float(), dim=1)
    m = e.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=e.device)
    if valid_mask is None:
        pairs = ~eye
    elif valid_mask.ndim == 1:
        pairs = valid_mask[:, None] & valid_mask[None, :] & ~eye
    else:
        pairs = valid_mask & ~eye
    pos = pos_mask & pairs
    cos = e @ e.T
    logits = (cos / tau).masked_fill(~pairs, _NEG)
    lse = torch.logsumexp(logits, dim=1)
    w = pos.to(e.dtype) if pos_weight is None else pos_weight.to(e.dtype) * pos
    wsum = w.sum(1)
    has = wsum > 0
    # -sum_p w_ip (logit_ip - lse_i) / sum_p w_ip; w is 0 off the positives, so no -inf*0 appears
    per_anchor = (wsum * lse - (w * logits).sum(1)) / wsum.clamp_min(1e-12)
    loss = per_anchor[has].mean() if bool(has.any()) else cos.sum() * 0.0
    if not return_stats:
        return loss
    with torch.no_grad():
        posf = pos.to(e.dtype)
        n_pos, n_pairs = float(posf.sum()), float(pairs.sum())
        pos_sum, all_sum = float((cos * posf).sum()), float(cos.masked_fill(~pairs, 0.0).sum())
        top1 = pos.gather(1, logits.argmax(1, keepdim=True))[:, 0][has]
        chance = (wsum.new_tensor(0) + pos.sum(1) / pairs.sum(1).clamp_min(1))[has]
        nan = float("nan")
        stats = {"pos_sim": pos_sum / n_pos if n_pos else nan,
                 "neg_sim": (all_sum - pos_sum) / (n_pairs - n_pos) if n_pairs > n_pos else nan,
                 "top1": float(top1.float().mean()) if bool(has.any()) else nan,
                 "top1_chance": float(chance.mean()) if bool(has.any()) else nan}
    return loss, stats


def pool_regions(features: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Region pooling: weighted means of ``features`` (B, C, *S) under ``weights`` (B, K, *S)
    (soft assignments or 0/1 masks); returns (means (B, K, C), masses (B, K))."""
    f = features.flatten(2).to(weights.dtype)
    w = weights.flatten(2)
    mass = w.sum(-1)
    means = torch.einsum("bkn,bcn->bkc", w, f) / (mass[..., None] + eps)
    return means, mass


def mlp_head(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """Projection head on pooled vectors: Linear -> BatchNorm -> ReLU -> Linear (SimCLR/MoCo v2 style;
    thrown away after pretraining, so its BatchNorm never reaches the GroupNorm backbone).

    The BatchNorm matters: pooled GroupNorm features of different images are nearly identical at
    first, and identical embeddings are a stationary point of InfoNCE; normalising each feature
    across the batch amplifies the differences so the contrast can start learning.
    """
    return nn.Sequential(nn.Linear(c_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, c_out))


def global_vectors(bottleneck: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a (B, C, *S) bottleneck to (B, C)."""
    return bottleneck.flatten(2).mean(-1)


def two_view_masks(n: int, device: torch.device | None = None) -> torch.Tensor:
    """Positive mask of 2n items ordered [view 1 of 0..n-1, view 2 of 0..n-1]: the other view."""
    ids = torch.arange(n, device=device).repeat(2)
    return ids[:, None] == ids[None, :]


class ContrastiveTask(Task):
    """Base of the two-view contrastive pretexts: heads built by :meth:`bind`, views from
    :func:`~napari_regcon.core.pretext.views.make_views`; encoder and decoder transfer."""

    kind = "pretrained"
    transfer = ("encoder.", "upsample.", "decoder.")
    augment_views = True  # intensity augmentation of the views (tests switch it off to compare pixels)

    def __init__(self, tau: float = 0.1, view_fraction: float = 0.75) -> None:
        super().__init__()
        if not tau > 0:
            raise RegconError(f"The temperature must be positive, not {tau}.")
        if not 0.25 <= view_fraction <= 1.0:
            raise RegconError(f"view_fraction must be between 0.25 and 1, not {view_fraction}.")
        self.tau = float(tau)
        self.view_fraction = float(view_fraction)
        self._bound: tuple | None = None
        self.ndim = 2
        self.widths: list[int] = []
        self.divisor = 8

    def bind(self, model: UNet) -> None:
        """Build the heads for ``model``'s widths (idempotent for the same architecture).

        Called by the training loop before it creates the optimiser, so the heads train.
        """
        key = (model.config.ndim, tuple(model.widths))
        if self._bound == key:
            return
        self.ndim = model.config.ndim
        self.widths = list(model.widths)
        self.divisor = int(model.config.divisor[-1])
        self.build_heads(model)
        device = next(model.parameters()).device
        self.to(device)
        self._bound = key

    def build_heads(self, model: UNet) -> None:
        """Create the task's own modules for this network (override)."""

    def _check_bound(self, model: UNet) -> None:
        if self._bound != (model.config.ndim, tuple(model.widths)):
            raise RuntimeError(f"call {type(self).__name__}.bind(model) before training (the training loop does).")

    @property
    def view_multiple(self) -> int:
        """Crop sizes and offsets of the views are multiples of this (in pixels)."""
        return self.divisor

    def check_input(self, shape_czyx: tuple[int, int, int, int], ndim: int) -> None:
        if min(shape_czyx[-2:]) < 4:
            raise RegconError(f"The image ({shape_czyx[-2]}x{shape_czyx[-1]} pixels in YX) is too small for {self.name}; it needs at least 4 pixels per axis.")

    def views(self, image: np.ndarray, rng: np.random.Generator, labels: np.ndarray | None = None) -> Views:
        """Two augmented views of a sampled batch (see :func:`make_views`)."""
        if image.shape[-2] < self.view_multiple or image.shape[-1] < self.view_multiple:
            raise RegconError(f"The patch {image.shape[-2]}x{image.shape[-1]} is too small for {self.name}: it needs at least {self.view_multiple} pixels in Y and X.")
        return make_views(image, rng, self.view_multiple, self.view_fraction, labels=labels, augment=self.augment_views)

    def params(self) -> dict[str, Any]:
        return {"tau": self.tau, "view_fraction": self.view_fraction}


def lcm(a: int, b: int) -> int:
    """Least common multiple."""
    return a * b // math.gcd(a, b)
