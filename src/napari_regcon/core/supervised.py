"""The supervised objective for fine-tuning: cross-entropy + soft Dice on annotated pixels only.

For sparse strokes (the ``strokes`` recipe, measured in benchmarks/annotation_loop.py):
class-balanced cross-entropy, so a class painted with fewer pixels still counts as much, and an
edge-aware smoothness term on the unpainted pixels. An optional consistency term (FixMatch-style,
the pixel-level cross-supervision of the semi-supervised paper with one network) makes the
confident prediction of a weakly augmented view the target of a strongly augmented one. In a
correction round an optional distillation term keeps the unpainted pixels near the prediction of
the model the round continues (``distill``): the new strokes change what they cover, not the rest.
With ``release`` the term lets go of the pixels that look, to the previous model, more like the
painted pixels it got wrong than like those it got right (:class:`CorrectionMemory`): a correction
stroke then changes the regions of its kind across the stack, not only the pixels it covers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .augment import affine, geometric, intensity
from .labels import IGNORE
from .models import UNet
from .pretext.base import Task


def sparse_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over classes, counting only pixels whose target is not IGNORE."""
    n = logits.shape[1]
    valid = (target != IGNORE).unsqueeze(1).to(logits.dtype)
    prob = logits.softmax(1) * valid
    onehot = F.one_hot(target.clamp_min(0), n).movedim(-1, 1).to(logits.dtype) * valid
    dims = (0, *range(2, logits.ndim))
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the classes present of each class's mean cross-entropy (annotated pixels only)."""
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    losses = [per_pixel[target == c].mean() for c in range(logits.shape[1]) if (target == c).any()]
    return torch.stack(losses).mean()


def consistency_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                     threshold: float) -> tuple[torch.Tensor, float]:
    """Cross-entropy of ``student`` logits to the confident argmax of ``teacher`` on unpainted pixels.

    Returns the loss (mean over all unpainted pixels, so few confident pixels give a small pull)
    and the fraction of unpainted pixels that were confident.
    """
    prob = teacher.detach().float().softmax(1)
    conf, pseudo = prob.max(1)
    unpainted = target == IGNORE
    mask = (conf >= threshold) & unpainted
    n_unpainted = int(unpainted.sum())
    if n_unpainted == 0:
        return student.sum() * 0.0, 0.0
    per_pixel = F.cross_entropy(student, pseudo, reduction="none")
    return (per_pixel * mask).sum() / n_unpainted, float(mask.sum()) / n_unpainted


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                      released: torch.Tensor | None = None) -> torch.Tensor:
    """KL divergence from the ``teacher``'s class probabilities to the ``student``'s, mean over unpainted pixels.

    Learning without forgetting (Li & Hoiem 2016) for a correction round: where the user painted
    nothing new, the previous model's answer stays the reference. Pixels in ``released`` (a boolean
    mask like ``target``) are left out of the sum but still count in the mean, so the pull elsewhere
    is unchanged.
    """
    unpainted = (target == IGNORE).unsqueeze(1)
    if not unpainted.any():
        return student.sum() * 0.0
    log_s = student.float().log_softmax(1)
    log_t = teacher.detach().float().log_softmax(1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1, keepdim=True)
    held = unpainted if released is None else unpainted & ~released.unsqueeze(1)
    return (kl * held).sum() / unpainted.sum()


class CorrectionMemory:
    """The previous model's features at painted pixels, split by its predicted class and whether the
    paint agrees with it: ``right[c]`` (it says c, the label is c) and ``wrong[c]`` (it says c, the
    label is another class). Filled from each batch (first in, first out, ``size`` per bank).

    :meth:`released` marks the unpainted pixels whose nearest painted neighbour in that feature space
    (cosine) is one the model got wrong: the regions a correction showed to be wrong, wherever in the
    stack they are, which the distillation then stops holding at the previous answer.
    """

    def __init__(self, n_classes: int, size: int = 256, per_step: int = 64, seed: int = 0) -> None:
        self.size, self.per_step = int(size), int(per_step)
        self.right: list[torch.Tensor | None] = [None] * n_classes
        self.wrong: list[torch.Tensor | None] = [None] * n_classes
        self._gen = torch.Generator().manual_seed(seed)

    def _push(self, banks: list[torch.Tensor | None], c: int, feats: torch.Tensor) -> None:
        if len(feats) > self.per_step:
            feats = feats[torch.randperm(len(feats), generator=self._gen)[: self.per_step].to(feats.device)]
        old = banks[c]
        banks[c] = feats if old is None else torch.cat([old, feats])[-self.size:]

    def update(self, feats: torch.Tensor, said: torch.Tensor, target: torch.Tensor) -> None:
        """Add the painted pixels of a batch: ``feats`` (N, C, ...) unit-normalised, ``said`` the previous
        model's classes, ``target`` the labels (IGNORE where unpainted)."""
        flat = feats.movedim(1, -1).reshape(-1, feats.shape[1])
        said, target = said.reshape(-1), target.reshape(-1)
        painted = target != IGNORE
        for c in range(len(self.right)):
            here = painted & (said == c)
            if here.any():
                agree = target == c
                if (here & agree).any():
                    self._push(self.right, c, flat[here & agree])
                if (here & ~agree).any():
                    self._push(self.wrong, c, flat[here & ~agree])

    def released(self, feats: torch.Tensor, said: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Boolean mask (shaped like ``target``) of the unpainted pixels nearer the wrong bank of their
        class than its right bank."""
        out = torch.zeros(target.shape, dtype=torch.bool, device=target.device)
        flat = feats.movedim(1, -1).reshape(-1, feats.shape[1])
        said_f, free = said.reshape(-1), (target == IGNORE).reshape(-1)
        view = out.view(-1)
        for c, (right, wrong) in enumerate(zip(self.right, self.wrong)):
            if wrong is None:
                continue
            idx = torch.nonzero(free & (said_f == c)).squeeze(1)
            if idx.numel() == 0:
                continue
            f = flat[idx]
            near_wrong = (f @ wrong.T).amax(1)
            near_right = (f @ right.T).amax(1) if right is not None else torch.full_like(near_wrong, -1.0)
            view[idx[near_wrong > near_right]] = True
        return out


def edge_aware_smoothness(logits: torch.Tensor, image: torch.Tensor, radius: int = 2, dilation: int = 1,
                          sigma_intensity: float = 0.1) -> torch.Tensor:
    """A regularised loss for scribbles (Tang et al. 2018, "On regularized losses for weakly-
    supervised CNN segmentation"): neighbours of similar intensity should share a class.

    Mean over pixel pairs within a (2 ``radius`` + 1)² window (spaced by ``dilation``) in each
    plane of ``w_ij (1 - p_i . p_j)``, with ``w_ij = exp(-|I_i - I_j|² / 2 sigma²)`` from the
    mean intensity of the input channels. Class boundaries are pulled onto intensity edges, so
    the unpainted band between a stroke and the object's edge takes the class of its side.

    Computed offset by offset on shifted views (each pair once, counted twice: ``w`` and the
    agreement are symmetric), not on a (2 ``radius`` + 1)²-fold unfolded copy: the same sum, 5x
    faster forward + backward on a batch of 8x128² (benchmarks/training_speed.py).
    """
    prob = logits.float().softmax(1)
    intensity_map = image.float().mean(1, keepdim=True)
    if prob.ndim == 5:  # 3D: in-plane neighbours only (stacks are anisotropic)
        b, c, z, h, w = prob.shape
        prob = prob.permute(0, 2, 1, 3, 4).reshape(b * z, c, h, w)
        intensity_map = intensity_map.permute(0, 2, 1, 3, 4).reshape(b * z, 1, h, w)
    n, _, h, w = prob.shape
    total = (1 - (prob * prob).sum(1)).sum()  # each pixel with itself: weight 1
    weights = torch.tensor(float(n * h * w), device=prob.device)
    for dy in range(radius + 1):
        for dx in range(-radius, radius + 1):
            oy, ox = dy * dilation, dx * dilation
            if (dy == 0 and dx <= 0) or oy >= h or abs(ox) >= w:  # the mirrored offset counts it, or no pair fits
                continue
            here = (slice(None), slice(None), slice(0, h - oy), slice(max(0, -ox), w - max(0, ox)))
            there = (slice(None), slice(None), slice(oy, h), slice(max(0, ox), w - max(0, -ox)))
            wt = torch.exp(-((intensity_map[there] - intensity_map[here]) ** 2) / (2 * sigma_intensity ** 2))[:, 0]
            agree = (prob[here] * prob[there]).sum(1)
            total = total + 2 * (wt * (1 - agree)).sum()
            weights = weights + 2 * wt.sum()
    return total / weights.clamp_min(1.0)


class SupervisedTask(Task):
    """Fine-tuning on labels: CE (ignoring unannotated pixels) + soft Dice, optionally balanced CE,
    edge-aware smoothness and consistency on the unannotated pixels."""

    name = "supervised"
    kind = "segmentation"
    description = "Fine-tune on painted labels."

    def __init__(self, n_classes: int, dice_weight: float = 1.0, augment: bool = True,
                 balanced: bool = False, consistency: float = 0.0, threshold: float = 0.9,
                 smoothness: float = 0.0, affine_scale: float = 0.0, distill: float = 0.0,
                 smooth_sigma: float = 0.1, edges_from_image: bool = False, jitter: float = 1.0,
                 release: bool = False) -> None:
        super().__init__()
        self.n_classes = int(n_classes)
        self.dice_weight = float(dice_weight)
        self.augment = augment
        self.balanced = bool(balanced)
        self.consistency = float(consistency)
        self.threshold = float(threshold)
        self.smoothness = float(smoothness)
        self.smooth_sigma = float(smooth_sigma)
        self.jitter = float(jitter)  # strength of the intensity augmentation
        self.edges_from_image = bool(edges_from_image)  # smoothness on the patch before intensity jitter
        self.affine_scale = float(affine_scale)
        self.distill = float(distill)
        self.release = bool(release)
        self._teacher: list[UNet] = []  # a list, so the frozen copy is not part of the task's state
        self.memory = CorrectionMemory(self.n_classes) if self.release else None

    def out_channels(self, in_channels: int) -> int:
        return self.n_classes

    def set_teacher(self, teacher: UNet) -> None:
        """The frozen model a correction round continues; the distillation term's reference."""
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher = [teacher]

    def bind(self, model: UNet) -> None:
        if self._teacher:  # on the network's device
            self._teacher[0].to(next(model.parameters()).device)

    def prepare(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        image, target = batch["image"], batch["target"]
        if self.augment:
            image, target = geometric(image, target, rng)
            if self.affine_scale >= 1.0:
                image, target = affine(image, target, rng, scale=self.affine_scale, fill=IGNORE)
        out = {"target": torch.from_numpy(target)}
        if self.consistency > 0:
            # the weak view is the geometrically augmented patch; the strong one adds intensity
            # jitter twice as strong, so the network must agree with itself under appearance change
            out["input_weak"] = torch.from_numpy(np.ascontiguousarray(image))
            out["input"] = torch.from_numpy(intensity(image, rng, strength=2.0))
        else:
            jittered = self.augment and self.jitter > 0
            out["input"] = torch.from_numpy(intensity(image, rng, strength=self.jitter) if jittered else image)
            if self.smoothness > 0 and self.augment and self.edges_from_image:  # the image's edges, not the jitter's
                out["input_weak"] = torch.from_numpy(np.ascontiguousarray(image))
        return out

    def loss(self, model: UNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["input"]).float()
        target = batch["target"]
        if not (target != IGNORE).any():
            zero = logits.sum() * 0.0
            return zero, {"ce": 0.0, "dice": 0.0}
        if self.balanced:
            ce = balanced_cross_entropy(logits, target)
        else:
            ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
        dice = sparse_dice_loss(logits, target) if self.dice_weight else logits.sum() * 0.0
        total = ce + self.dice_weight * dice
        logs = {"ce": float(ce.detach()), "dice": float(dice.detach())}
        if self.smoothness > 0:
            smooth = edge_aware_smoothness(logits, batch.get("input_weak", batch["input"]),
                                           sigma_intensity=self.smooth_sigma)
            total = total + self.smoothness * smooth
            logs["smoothness"] = float(smooth.detach())
        if self.distill > 0 and self._teacher:
            released = None
            with torch.no_grad():
                teacher = self._teacher[0]
                feats = teacher.features(batch["input"])[1][-1]
                reference = teacher.head(feats)
                if self.memory is not None:  # its last features, where it tells its classes apart
                    unit = F.normalize(feats.float(), dim=1)
                    said = reference.argmax(1)
                    self.memory.update(unit, said, target)
                    released = self.memory.released(unit, said, target)
            kd = distillation_loss(logits, reference, target, released)
            total = total + self.distill * kd
            logs["distill"] = float(kd.detach())
            if released is not None:
                logs["released"] = float(released.float().mean())
        if self.consistency > 0 and "input_weak" in batch:
            with torch.no_grad():
                teacher = model(batch["input_weak"])
            cons, frac = consistency_loss(logits, teacher, target, self.threshold)
            total = total + self.consistency * cons
            logs.update(consistency=float(cons.detach()), confident=frac)
        return total, logs

    def params(self) -> dict[str, Any]:
        return {"dice_weight": self.dice_weight, "balanced": self.balanced, "consistency": self.consistency,
                "threshold": self.threshold, "smoothness": self.smoothness, "smooth_sigma": self.smooth_sigma,
                "affine_scale": self.affine_scale, "distill": self.distill, "jitter": self.jitter,
                "release": self.release}
