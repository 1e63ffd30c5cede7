"""Fine-tuning recipes: how the loss, the patch sampling and the stopping rule fit the labels.

Painted strokes cover ~1 % of a slice; a dense mask covers all of it. The two need different
training (measured in benchmarks/annotation_loop.py): for strokes, class-balanced loss,
edge-aware smoothness on the unpainted pixels, patches from the whole stack, an averaged model,
a learning rate held at its peak until the predicted regions stop changing, then a short
cool-down and the end of the run, and short, gentle correction rounds that keep the unpainted
pixels near the previous model's answer (distillation), so a correction changes what it covers;
on faint images (two-photon) a 2D network's first run has a weaker smoothness.
Dense labels (``dense``) train a model whose prediction does not lean on the class shares of the
labeled stack, so that it carries over to stacks whose objects fill another share of the volume
(vessels fill 12 % of one two-photon stack and 36 % of another): cross-entropy with the classes
weighed alike + soft Dice, patches drawn anywhere on the annotated planes (a patch's class shares,
whose statistics the network's GroupNorm learns, are then those of a prediction tile, not of
windows centred on each class in turn). At prediction half of the labels' log class prior is
added back to the logits (``prior_shift``, stored in the bundle as the classes' logit offset): the
full prior would make the model the labeled stack's, none over-predicts the rarer class within it.
The share added shrinks with the share of planes labeled: with every plane of the stack labeled,
none (the model is then for other stacks only). It is added only when predicting the labeled image
itself (``classes.offset_for``, its fingerprint): the prior says nothing about another stack.
Measured (docs/benchmarks.md): the same Dice on the same stack as plain cross-entropy, +4 to +6
points on another stack. ``balanced`` adds none of the prior back, for a model meant only for
other stacks. A correction round on full masks (continuing a segmentation model, e.g. after
"Accept this slice's prediction") uses ``refine``: plain cross-entropy + soft Dice around the labels.
``auto`` picks ``strokes`` or ``dense`` by the painted fraction. Settings measured and left as options
(docs/benchmarks.md): ``smooth_sigma=0`` (the smoothness's edge scale from the image), ``jitter`` (the
strength of the intensity augmentation), ``encoder_lr_scale`` (a pretrained encoder's share of the rate),
``release`` (a correction round's distillation lets go of what looks like the mistakes it corrects),
``filter_scales`` (a new network's first layer: a random forest's multiscale filters, ``core/filterbank.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .errors import RegconError
from .labels import LabelSet

#: below this share of annotated pixels (over the annotated planes) labels count as strokes
SPARSE_FRACTION = 0.3


@dataclass(frozen=True)
class Recipe:
    """Settings of one fine-tuning recipe (loss, sampling, weight averaging, stopping)."""

    name: str = "dense"
    dice_weight: float = 1.0
    balanced: bool = False
    consistency: float = 0.0
    threshold: float = 0.9
    smoothness: float = 0.0
    smooth_sigma: float = 0.1  # intensity scale of the smoothness's edges (0: the image's neighbour contrast)
    jitter: float = 1.0  # strength of the intensity augmentation (contrast, brightness, gamma, noise; 0: off)
    affine_scale: float = 0.0  # >= 1: random rotation and zoom in [1/s, s] of every patch (0: off)
    distill: float = 0.0  # a correction round: weight of keeping the unpainted pixels near the previous model
    release: bool = False  # distillation lets go of what looks (to that model) like the pixels it got wrong
    uniform_fraction: float = 0.0  # share of patches drawn anywhere in the stack (unpainted context)
    plane_fraction: float = 0.0  # of the others, share drawn anywhere on the annotated planes (else near labels)
    ema: float = 0.0
    stop_when_stable: bool = False
    stable_tol: float = 0.005  # share of probe pixels changing class between checks that counts as stable
    schedule: str = "cosine"  # cosine over the step limit, or plateau (constant, cool-down once stable)
    lr: float | None = None  # None: the job's learning rate
    retrain_lr_scale: float = 1.0  # a run that continues a segmentation model scales its lr by this
    retrain_steps: int | None = None  # such a run does at most this many steps (a correction round)
    retrain_check_every: int | None = None  # such a run checks stability this often (None: the loop's default)
    retrain_smoothness: float | None = None  # such a run's smoothness weight (None: ``smoothness``)
    faint_smoothness: float | None = None  # a 2D first run's smoothness on an image whose neighbour contrast is
    # under half ``smooth_sigma`` (None: ``smoothness``): there the fixed edge scale sees no edges, only noise
    prior_shift: float = 0.0  # at prediction, add this times the labels' log class shares to the logits
    retrain_as: str | None = None  # a run that continues a segmentation model uses this recipe instead
    filter_scales: tuple[float, ...] = ()  # a new network's fixed multiscale input features (sigmas, pixels)
    encoder_lr_scale: float = 1.0  # from a pretrained (not segmentation) model: the encoder's share of the rate
    self_train: bool = False  # a 2D network on a stack labeled on some planes: a second pass learns from the
    # first model's answer on the planes left unlabeled (core/selftrain.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def logit_offset(self, labels: LabelSet) -> list[float] | None:
        """The labels' log class shares, centred, times ``prior_shift`` and the share of the image's planes
        left unlabeled (None when that is 0): added to the logits at prediction, it moves a model trained
        with the classes weighed alike part of the way back to the labeled stack's class prior. The prior
        is evidence about the planes the user did not label; with every plane labeled the model can only
        be meant for other stacks, whose objects may fill another share (issue 13), so none is added."""
        shift = self.prior_shift * (1.0 - labels.plane_share)
        if shift <= 1e-6:
            return None
        log_prior = np.log(np.clip(labels.shares, 1e-4, None))
        return [float(v) for v in shift * (log_prior - log_prior.mean())]

    def task_params(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~napari_regcon.core.supervised.SupervisedTask`."""
        return {"dice_weight": self.dice_weight, "balanced": self.balanced, "consistency": self.consistency,
                "threshold": self.threshold, "smoothness": self.smoothness, "smooth_sigma": self.smooth_sigma,
                "affine_scale": self.affine_scale, "distill": self.distill, "jitter": self.jitter,
                "release": self.release}


RECIPES: dict[str, Recipe] = {
    "dense": Recipe(balanced=True, plane_fraction=1.0, prior_shift=0.5, retrain_as="refine", self_train=True),
    # on a faint image (neighbour contrast under half the edge scale: two-photon, not EM) a 2D network's first
    # run has smoothness 1, as at 3 it floods dim planes with vessel; correction rounds and 3D networks keep 3
    # (in 3D the lighter start made the later rounds fall). Six seeds in 2D, three in 3D: benchmarks.md.
    "strokes": Recipe(name="strokes", dice_weight=0.0, balanced=True, smoothness=3.0, uniform_fraction=0.5,
                      ema=0.99, stop_when_stable=True, schedule="plateau", retrain_lr_scale=0.5, retrain_steps=150,
                      distill=1.0, faint_smoothness=1.0),
    "balanced": Recipe(name="balanced", balanced=True, plane_fraction=1.0),
    # a correction round on full masks (an accepted slice, then fixed): plain cross-entropy + soft Dice,
    # patches centred near each class in turn. The labels are mostly the model's own prediction, and
    # weighing its rarer class up there amplifies the model's own errors (ISBI accept-then-fix: 0.705
    # after three rounds with this recipe, 0.676 with the dense one; 3 seeds).
    "refine": Recipe(name="refine"),
}


def choose_recipe(name: str | Recipe | None, labels: LabelSet, **overrides: Any) -> Recipe:
    """The recipe ``name`` (``auto``/None: ``strokes`` for sparse labels, else ``dense``; ``balanced``:
    itself for dense labels, ``strokes`` for sparse ones), with overrides."""
    if isinstance(name, Recipe):
        recipe = name
    else:
        key = (name or "auto").lower()
        sparse = labels.painted_fraction < SPARSE_FRACTION
        if key == "auto":
            key = "strokes" if sparse else "dense"
        elif key == "balanced" and sparse:
            key = "strokes"  # strokes weigh the classes alike already, and need their own recipe
        if key not in RECIPES:
            raise RegconError(f"Unknown fine-tuning recipe {name!r}: use auto, {', '.join(RECIPES)}.")
        recipe = RECIPES[key]
    known = {k: v for k, v in overrides.items() if v is not None}
    bad = sorted(set(known) - set(Recipe.__dataclass_fields__))
    if bad:
        raise RegconError(f"Unknown recipe setting(s) {', '.join(bad)}; known: {', '.join(Recipe.__dataclass_fields__)}.")
    return replace(recipe, **known) if known else recipe
