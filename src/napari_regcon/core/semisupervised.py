"""Semi-supervised fine-tuning: cross pseudo supervision plus patch- and pixel-level contrast.

After Wu et al. (EMBC 2023, "multiscale contrastive learning and cross-supervision"), built on
the verified CPS recipe (Chen et al. 2021; SSL4MIS medical defaults). Two U-Nets of the same
architecture but different initialisation see labeled patches (supervised CE + Dice, 0 =
not annotated is ignored) and unlabeled patches. On the unlabeled patches each network
predicts a clean view; its confident argmax (max probability > ``threshold``) supervises the
*other* network, which sees an input-perturbed view (intensity jitter + noise) with perturbed
bottleneck features (multiplicative noise + channel dropout). A projection head on each
network's last decoder features adds two supervised-contrastive terms whose classes come from
the labels and the other network's confident pseudo-labels: pixel-level (class-balanced
anchors, half of them hard) and patch-level (features averaged over cells whose known pixels
agree on one class), pulling same-class features together and pushing classes apart. The
unsupervised weights ramp up as ``exp(-5 (1 - t/T_r)^2)`` over the first ``ramp`` of training.

The task owns network 2 and the heads (they train with the model and are saved in the
training state for resuming); the bundle keeps network 1, which is used for prediction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import geometric, intensity
from .errors import RegconError
from .labels import IGNORE
from .models import UNet, UNetConfig, build_model
from .pretext.base import Task
from .supervised import sparse_dice_loss


def ramp_weight(step: int, total: int, ramp: float = 0.4) -> float:
    """Sigmoid-shaped ramp-up ``exp(-5 (1 - t)^2)`` reaching 1 after ``ramp * total`` steps."""
    length = ramp * total
    if length <= 0:
        return 1.0
    t = min(1.0, step / length)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def confident_pseudo_labels(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Argmax class of ``probs`` (B, K, *S) where its probability exceeds ``threshold``, else IGNORE."""
    conf, label = probs.max(1)
    return torch.where(conf > threshold, label, torch.full_like(label, IGNORE))


def cross_pseudo_loss(logits: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` against pseudo-labels, averaged over confident pixels only (0 if none)."""
    valid = pseudo != IGNORE
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, pseudo, ignore_index=IGNORE)


def supcon(emb: torch.Tensor, labels: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Multi-positive InfoNCE (SupCon) over L2-normalised rows of ``emb`` (M, D) with class ``labels`` (M,).

    Positives of an anchor are the other rows of its class; anchors without a positive are
    skipped. Returns 0 with fewer than two classes (nothing to separate).
    """
    if emb.shape[0] < 3 or torch.unique(labels).numel() < 2:
        return emb.sum() * 0.0
    emb = F.normalize(emb.float(), dim=1)
    sim = emb @ emb.t() / tau
    eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(1)
    keep = n_pos > 0
    per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(1) / n_pos.clamp_min(1)
    return per_anchor[keep].mean()


def pixel_contrast(emb: torch.Tensor, labels: torch.Tensor, hard: torch.Tensor, per_class: int = 256,
                   tau: float = 0.1) -> torch.Tensor:
    """Pixel-level SupCon on ``emb`` (B, D, *S): up to ``per_class`` anchors per class, half from ``hard`` pixels.

    ``labels`` (B, *S) holds class indices or IGNORE (never sampled); ``hard`` (B, *S) marks
    pixels the network gets wrong or is unsure about.
    """
    flat = emb.movedim(1, -1).reshape(-1, emb.shape[1])
    lab, hrd = labels.reshape(-1), hard.reshape(-1)
    picks = []
    for c in torch.unique(lab[lab != IGNORE]).tolist():
        idx_c = lab == c
        hard_idx = torch.nonzero(idx_c & hrd).squeeze(1)
        easy_idx = torch.nonzero(idx_c & ~hrd).squeeze(1)
        n_hard = min(len(hard_idx), per_class // 2)
        n_easy = min(len(easy_idx), per_class - n_hard)
        n_hard = min(len(hard_idx), per_class - n_easy)
        picks.append(hard_idx[torch.randperm(len(hard_idx), device=emb.device)[:n_hard]])
        picks.append(easy_idx[torch.randperm(len(easy_idx), device=emb.device)[:n_easy]])
    if not picks:
        return emb.sum() * 0.0
    idx = torch.cat(picks)
    return supcon(flat[idx], lab[idx], tau)


def patch_contrast(emb: torch.Tensor, labels: torch.Tensor, n_classes: int, cell: tuple[int, ...],
                   purity: float = 0.7, min_known: float = 0.05, tau: float = 0.1) -> torch.Tensor:
    """Patch-level SupCon: ``emb`` (B, D, *S) averaged over ``cell`` blocks, labelled by their majority class.

    A patch is used when at least ``min_known`` of its pixels carry a label (or confident
    pseudo-label) and its majority class holds at least ``purity`` of them.
    """
    pool = F.avg_pool2d if emb.ndim == 4 else F.avg_pool3d
    pooled = pool(emb.float(), cell, cell)
    known = labels != IGNORE
    onehot = F.one_hot(labels.clamp_min(0), n_classes).movedim(-1, 1).float() * known.unsqueeze(1).float()
    frac = pool(onehot, cell, cell)
    known_frac = frac.sum(1)
    top, major = frac.max(1)
    keep = (known_frac >= min_known) & (top >= purity * known_frac)
    vecs = pooled.movedim(1, -1)[keep]
    return supcon(vecs, major[keep], tau)


class ProjectionHead(nn.Sequential):
    """Dense projection (1x1 conv, GroupNorm, ReLU, 1x1 conv) from decoder features to ``dim`` channels."""

    def __init__(self, ndim: int, channels: int, dim: int = 64) -> None:
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        super().__init__(conv(channels, channels, 1), nn.GroupNorm(math.gcd(8, channels), channels),
                         nn.ReLU(inplace=True), conv(channels, dim, 1))


def _xavier_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SemiSupervisedTask(Task):
    """Cross pseudo supervision + multiscale (patch and pixel) contrast on labeled + unlabeled patches.

    Parameters
    ----------
    n_classes
        Number of label classes.
    model_config
        Architecture of the segmentation U-Net; network 2 is built from it by the same factory.
    total_steps
        Length of the run (for the ramp-up of the unsupervised weights).
    threshold
        Minimum softmax probability of a pseudo-label to be used.
    ramp
        Fraction of the run over which the unsupervised weights ramp up.
    lambda_cps, lambda_pix, lambda_patch
        Final weights of cross supervision, pixel contrast and patch contrast.
    """

    name = "semisupervised"
    kind = "segmentation"
    description = "Semi-supervised fine-tuning: two networks cross-supervise on unlabeled patches, plus patch and pixel contrast."

    def __init__(self, n_classes: int, model_config: UNetConfig | dict, total_steps: int, *, threshold: float = 0.8,
                 ramp: float = 0.4, lambda_cps: float = 1.0, lambda_pix: float = 0.1, lambda_patch: float = 0.1,
                 tau: float = 0.1, proj_dim: int = 64, anchors: int = 256, patch_cell: int = 16,
                 purity: float = 0.7, feature_noise: float = 0.3, feature_dropout: float = 0.2,
                 input_noise: float = 0.1, dice_weight: float = 1.0, net2_init: str = "same", seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= threshold < 1.0:
            raise RegconError(f"The pseudo-label confidence threshold must be in [0, 1), not {threshold}.")
        if net2_init not in ("same", "random"):
            raise RegconError(f"net2_init must be 'same' or 'random', not {net2_init!r}.")
        cfg = UNetConfig.from_dict(model_config) if isinstance(model_config, dict) else model_config
        self.n_classes, self.total_steps = int(n_classes), int(total_steps)
        self.threshold, self.ramp = float(threshold), float(ramp)
        self.lambda_cps, self.lambda_pix, self.lambda_patch = float(lambda_cps), float(lambda_pix), float(lambda_patch)
        self.tau, self.anchors, self.patch_cell, self.purity = float(tau), int(anchors), int(patch_cell), float(purity)
        self.feature_noise, self.feature_dropout = float(feature_noise), float(feature_dropout)
        self.input_noise, self.dice_weight, self.net2_init = float(input_noise), float(dice_weight), net2_init
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) + 7919)
            self.net2 = build_model(cfg)
            _xavier_init(self.net2)
            self.proj1 = ProjectionHead(cfg.ndim, cfg.base, proj_dim)
            self.proj2 = ProjectionHead(cfg.ndim, cfg.base, proj_dim)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def out_channels(self, in_channels: int) -> int:
        return self.n_classes

    # ---- CPU side -------------------------------------------------------------------------
    def _strong(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = intensity(image, rng)
        if self.input_noise > 0:
            out += rng.normal(0.0, self.input_noise, out.shape).astype(np.float32)
        return out

    def prepare(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if "image_u" not in batch:
            raise RegconError("Semi-supervised fine-tuning needs unlabeled patches; use a SemiSupervisedSampler.")
        image, target = geometric(batch["image"], batch["target"], rng)
        image = intensity(image, rng)
        unl, _ = geometric(batch["image_u"], None, rng)
        return {"input": torch.from_numpy(image), "target": torch.from_numpy(target),
                "input_u": torch.from_numpy(unl), "input_u1": torch.from_numpy(self._strong(unl, rng)),
                "input_u2": torch.from_numpy(self._strong(unl, rng))}

    # ---- device side ----------------------------------------------------------------------
    def _perturb(self, z: torch.Tensor) -> torch.Tensor:
        if self.feature_noise > 0:
            z = z * (1 + torch.empty_like(z).uniform_(-self.feature_noise, self.feature_noise))
        if self.feature_dropout > 0:
            keep = (torch.rand(z.shape[:2], device=z.device) >= self.feature_dropout).to(z.dtype)
            z = z * keep.view(*z.shape[:2], *([1] * (z.ndim - 2))) / (1 - self.feature_dropout)
        return z

    def _forward(self, net: UNet, x: torch.Tensor, n_perturbed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and last decoder features; the bottleneck of the last ``n_perturbed`` samples is perturbed."""
        z, skips = net.encode(x)
        if n_perturbed:
            z = torch.cat([z[:-n_perturbed], self._perturb(z[-n_perturbed:])])
        feats = net.decode(z, skips)[-1]
        return net.head(feats), feats

    def _cell(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        p = self.patch_cell
        cell = (max(1, p // 4), p, p) if len(spatial) == 3 else (p, p)
        return tuple(max(1, min(c, s)) for c, s in zip(cell, spatial))

    def supervised_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """CE + soft Dice over annotated pixels (IGNORE skipped); 0 when nothing is annotated."""
        if not bool((target != IGNORE).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, ignore_index=IGNORE) + self.dice_weight * sparse_dice_loss(logits, target)

    def contrast_losses(self, proj: nn.Module, feats: torch.Tensor, logits: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel and patch contrast of one network: ``labels`` are labels + the other net's confident pseudo-labels."""
        emb = proj(feats.float())
        with torch.no_grad():
            prob = logits.detach().float().softmax(1)
            conf, pred = prob.max(1)
            hard = (pred != labels) | (conf < self.threshold)
        pix = pixel_contrast(emb, labels, hard, self.anchors, self.tau)
        patch = patch_contrast(emb, labels, self.n_classes, self._cell(tuple(emb.shape[2:])), self.purity,
                               tau=self.tau)
        return pix, patch

    def loss(self, model: UNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x_l, y_l, x_u = batch["input"], batch["target"], batch["input_u"]
        n_l, n_u = x_l.shape[0], x_u.shape[0]
        with torch.no_grad():
            p1 = model(x_u).float().softmax(1)
            p2 = self.net2(x_u).float().softmax(1)
        pseudo1 = confident_pseudo_labels(p1, self.threshold)
        pseudo2 = confident_pseudo_labels(p2, self.threshold)
        logits1, feats1 = self._forward(model, torch.cat([x_l, batch["input_u1"]]), n_u)
        logits2, feats2 = self._forward(self.net2, torch.cat([x_l, batch["input_u2"]]), n_u)
        logits1, logits2 = logits1.float(), logits2.float()
        sup = 0.5 * (self.supervised_loss(logits1[:n_l], y_l) + self.supervised_loss(logits2[:n_l], y_l))
        cps = 0.5 * (cross_pseudo_loss(logits1[n_l:], pseudo2) + cross_pseudo_loss(logits2[n_l:], pseudo1))
        pix1, patch1 = self.contrast_losses(self.proj1, feats1, logits1, torch.cat([y_l, pseudo2]))
        pix2, patch2 = self.contrast_losses(self.proj2, feats2, logits2, torch.cat([y_l, pseudo1]))
        pix, patch = 0.5 * (pix1 + pix2), 0.5 * (patch1 + patch2)
        w = ramp_weight(int(self.step), self.total_steps, self.ramp)
        if self.training:
            self.step += 1
        total = sup + w * (self.lambda_cps * cps + self.lambda_pix * pix + self.lambda_patch * patch)
        confident = 0.5 * float((pseudo1 != IGNORE).float().mean() + (pseudo2 != IGNORE).float().mean())
        return total, {"sup": float(sup.detach()), "cps": float(cps.detach()), "pix": float(pix.detach()),
                       "patch": float(patch.detach()), "ramp": w, "confident": confident}

    def params(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "ramp": self.ramp, "lambda_cps": self.lambda_cps,
                "lambda_pix": self.lambda_pix, "lambda_patch": self.lambda_patch, "tau": self.tau,
                "anchors": self.anchors, "patch_cell": self.patch_cell, "purity": self.purity,
                "feature_noise": self.feature_noise, "feature_dropout": self.feature_dropout,
                "input_noise": self.input_noise, "dice_weight": self.dice_weight, "net2_init": self.net2_init}
