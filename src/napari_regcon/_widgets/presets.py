"""Data-type presets, and the one rule that derives a training form's model fields from them.

The form's data type, model dimensionality, patch and network size come from two choices of the
user: the data-type preset and (when fine-tuning) the *Start from* model. :func:`model_fields`
derives what the form shows from those two, so the fields can never contradict each other: a
chosen model fixes the dimensionality and network size (the data type shown follows it, with
the reason said), and going back to random initialisation gives the preset's settings again.
Nothing here imports Qt; the widgets only render a :class:`ModelFields`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from napari_regcon.core.bundle import as_bundle


@dataclass(frozen=True)
class Preset:
    """Sensible defaults for one kind of data."""

    label: str
    ndim: int
    patch: str
    batch: int
    pretrain_steps: int
    finetune_steps: int
    hint: str
    method_params: tuple[tuple[str, str], ...] = ()
    base: int = 16  # network width of a new model (the Advanced field, set when the data type changes)

    def params_for(self, method: str) -> str:
        """Suggested extra parameters of a pretext method for this kind of data ("" if none)."""
        return dict(self.method_params).get(method, "")


PRESETS = (
    Preset("Electron microscopy (2D slices)", 2, "128", 8, 500, 400,
           "EM stacks are anisotropic (z step >> pixel size): a 2D model on each slice works best."),
    Preset("Two-photon / 3D volume", 3, "8,128,128", 4, 200, 200,
           "Two-photon stacks are volumes: a 3D model (width 8) with flat 8x128x128 (z, y, x) patches (cut "
           "to the stack when it has fewer planes); "
           "masked image modelling hides bright structures (vessels, cells) more often.",
           (("mim", "mask=intensity"),), base=8),
)


def preset_for(ndim: int, preferred: int = 0) -> int:
    """The preset index for an ``ndim`` model: ``preferred`` when it is one, else the first that is."""
    if PRESETS[preferred].ndim == ndim:
        return preferred
    return next(i for i, p in enumerate(PRESETS) if p.ndim == ndim)


def patch_text(patch: Sequence[int]) -> str:
    """A patch as the Patch size field writes it: ``128`` for a square 2D patch, else ``8,64,64``."""
    if len(patch) == 2 and patch[0] == patch[1]:
        return str(patch[0])
    return ",".join(str(p) for p in patch)


@dataclass(frozen=True)
class ModelFields:
    """What a training form shows for the model, and whether (and why) a chosen model fixes it.

    ``base`` and ``depth`` are None when the network is new (the user's own Advanced values);
    ``reason`` is the one line saying why the locked fields are locked ("" when none is).
    """

    preset: int
    ndim: int
    patch: str
    steps: int
    batch: int
    base: int | None = None
    depth: int | None = None
    reason: str = ""

    @property
    def locked(self) -> bool:
        """True when a chosen model fixes the data type, Model, network width and depth."""
        return bool(self.reason)


def model_fields(preset: int, start: Any = None, pretrain: bool = False) -> ModelFields:
    """The form's model fields for the chosen data-type ``preset`` and *Start from* bundle (or None).

    Without a start model they are the preset's. A start model fixes the dimensionality and the
    network (width, depth, channels): the data type shown is the preset of that dimensionality
    (steps and batch size come with it), and the patch is the one the model was trained on.
    """
    if start is None:
        p = PRESETS[preset]
        return ModelFields(preset, p.ndim, p.patch, p.pretrain_steps if pretrain else p.finetune_steps, p.batch)
    b = as_bundle(start)
    cfg = b.model
    shown = preset_for(cfg.ndim, preset)
    p = PRESETS[shown]
    patch = patch_text(b.data.patch_size) if b.data.patch_size and len(b.data.patch_size) == cfg.ndim else p.patch
    channels = f"{cfg.in_channels} channel{'s' if cfg.in_channels != 1 else ''}"
    trained = f"; it was trained on {'×'.join(str(v) for v in b.data.patch_size)} patches" if b.data.patch_size else ""
    reason = (f"Set by the chosen model: {cfg.ndim}D, {channels}, network width {cfg.base}, depth {cfg.depth}"
              f"{trained}.")
    return ModelFields(shown, cfg.ndim, patch, p.pretrain_steps if pretrain else p.finetune_steps, p.batch,
                       cfg.base, cfg.depth, reason)


@dataclass
class ModelChoice:
    """The user's choices the model fields follow: the data type and the *Start from* bundle."""

    preset: int = 0
    start: Any = None
    pretrain: bool = False

    def choose_ndim(self, ndim: int) -> None:
        """Choosing Model: 2D/3D by hand picks the data type of that dimensionality."""
        if self.start is None:
            self.preset = preset_for(ndim, self.preset)

    def fields(self) -> ModelFields:
        """What the form shows now (:func:`model_fields`)."""
        return model_fields(self.preset, self.start, self.pretrain)
