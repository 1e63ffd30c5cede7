"""The supervised objective for fine-tuning: cross-entropy + soft Dice on annotated pixels only."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .augment import geometric, intensity
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


class SupervisedTask(Task):
    """Fine-tuning on labels: CE (ignoring unannotated pixels) + soft Dice."""

    name = "supervised"
    kind = "segmentation"
    description = "Fine-tune on painted labels."

    def __init__(self, n_classes: int, dice_weight: float = 1.0, augment: bool = True) -> None:
        super().__init__()
        self.n_classes = int(n_classes)
        self.dice_weight = float(dice_weight)
        self.augment = augment

    def out_channels(self, in_channels: int) -> int:
        return self.n_classes

    def prepare(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        image, target = batch["image"], batch["target"]
        if self.augment:
            image, target = geometric(image, target, rng)
            image = intensity(image, rng)
        return {"input": torch.from_numpy(image), "target": torch.from_numpy(target)}

    def loss(self, model: UNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["input"]).float()
        target = batch["target"]
        if not (target != IGNORE).any():
            zero = logits.sum() * 0.0
            return zero, {"ce": 0.0, "dice": 0.0}
        ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
        dice = sparse_dice_loss(logits, target)
        return ce + self.dice_weight * dice, {"ce": float(ce.detach()), "dice": float(dice.detach())}

    def params(self) -> dict[str, Any]:
        return {"dice_weight": self.dice_weight}
