"""The small interface every training objective implements, pretext or supervised.

The training loop knows only this: ``prepare`` turns a sampled numpy batch into tensors
(augmentation, masking, views: CPU work), ``loss`` computes the objective on the device. A task
is an ``nn.Module`` so that heads it owns (projection heads, region heads) train with the model
and are left behind when the backbone is transferred.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..models import UNet


class Task(nn.Module):
    """Base class of training objectives.

    Subclasses set ``name``, ``kind`` (``pretrained`` or ``segmentation``) and ``transfer``
    (state-dict prefixes of the U-Net that carry over to fine-tuning).
    """

    name: ClassVar[str] = "task"
    kind: ClassVar[str] = "pretrained"
    description: ClassVar[str] = ""
    transfer: ClassVar[tuple[str, ...]] = ("encoder.", "upsample.", "decoder.")

    def out_channels(self, in_channels: int) -> int:
        """Channels of the U-Net head while training this task."""
        return in_channels

    def check_input(self, shape_czyx: tuple[int, int, int, int], ndim: int) -> None:
        """Raise RegconError when this task cannot use an image of this shape (default: any)."""

    def prepare(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """CPU side: augment/mask a sampled batch and return tensors."""
        raise NotImplementedError

    def loss(self, model: UNet, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Device side: the scalar loss and a few named floats for the log."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Hyperparameters recorded in the bundle."""
        return {}
