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

    Subclasses set ``name``, ``kind`` (``pretrained`` or ``segmentation``), ``transfer``
    (state-dict prefixes of the U-Net that carry over to fine-tuning) and, when it differs,
    ``weight_decay`` (AdamW's, for pretraining with this task). Two optional hooks have defaults
    that do nothing: :meth:`bind` (build heads sized by the network) and :attr:`sample_options`
    (what to ask the patch sampler for).
    """

    name: ClassVar[str] = "task"
    kind: ClassVar[str] = "pretrained"
    description: ClassVar[str] = ""
    transfer: ClassVar[tuple[str, ...]] = ("encoder.", "upsample.", "decoder.")
    weight_decay: ClassVar[float] = 1e-4

    def bind(self, model: UNet) -> None:
        """Called by the training loop with the network before it builds the optimiser, so that heads
        sized by the network's widths can be built now and train with it (default: nothing to build)."""

    @property
    def sample_options(self) -> dict[str, Any]:
        """Keyword arguments for ``PatchSampler.sample`` (e.g. groups of neighbouring slices); default none."""
        return {}

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
