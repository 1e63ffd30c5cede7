"""The options of the training jobs, declared once, and option values as users write them.

:class:`PretrainOptions` and :class:`FinetuneOptions` are what
:func:`~napari_regcon.core.workflows.pretrain_job` and
:func:`~napari_regcon.core.workflows.finetune_job` take; the CLI fills them from its arguments, the
widgets from their forms, the demo by hand. (Prediction has
:class:`~napari_regcon.core.predict.PredictOptions`.) The parsers read patch and tile sizes and
``KEY=VALUE`` parameters the same way for every front door.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import RegconError

if TYPE_CHECKING:
    from .recipes import Recipe

Opts = TypeVar("Opts")


#: Patches per step and first-level width of a new network, per model dimensionality. The 3D ones
#: (with the 8x128x128 patch of :data:`~napari_regcon.core.sampling.DEFAULT_PATCH`) fine-tune a
#: 25x512x512 stack in ~2 min on 2 cores, at a higher vessel Dice than 16x128x128 / 8 / 16, which
#: took 22 min (docs/benchmarks.md, "3D fine-tune defaults").
DEFAULT_BATCH = {2: 8, 3: 4}
DEFAULT_BASE = {2: 16, 3: 8}


@dataclass
class TrainingOptions:
    """What every training run takes.

    Attributes
    ----------
    ndim
        2: a slice-wise model; 3: a volumetric one (an ``init`` bundle fixes it, and ``base``/``depth``).
    patch_size
        Training patch: ``128`` (YX) or ``16,64,64`` (ZYX); default: what fits the image.
    steps, batch_size, lr
        Optimisation steps, patches per step (default: :data:`DEFAULT_BATCH` for ``ndim``), learning rate.
    base, depth
        U-Net width of the first level (default: :data:`DEFAULT_BASE` for ``ndim``) and number of
        poolings (a new network only).
    channel_axis
        Axis of the channels in the images (None: single-channel).
    seed, device, precision
        Random seed; ``auto``/``cpu``/``cuda``/``mps``; arithmetic (``auto``, ``fp32``, ``bf16``, ``fp16``).
    checkpoint_every
        Save the bundle every N steps while training into a file (0: only at the end).
    voxel_size
        (Z, Y, X) voxel size when known (file metadata, layer scale): a fresh 3D network on a stack
        whose planes are far apart convolves in plane at its first levels.
    """

    ndim: int = 2
    patch_size: str | int | Sequence[int] | None = None
    steps: int = 400
    batch_size: int | None = None
    lr: float = 1e-3
    base: int | None = None
    depth: int = 3
    channel_axis: int | None = None
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 100
    precision: str = "auto"
    voxel_size: Sequence[float] | None = None

    def batch_for(self, ndim: int) -> int:
        """Patches per step of an ``ndim`` run: the one asked for, else the default for ``ndim``."""
        return self.batch_size if self.batch_size is not None else DEFAULT_BATCH[ndim]

    def base_for(self, ndim: int) -> int:
        """First-level width of a new ``ndim`` network: the one asked for, else the default for ``ndim``."""
        return self.base if self.base is not None else DEFAULT_BASE[ndim]


@dataclass
class PretrainOptions(TrainingOptions):
    """Self-supervised pretraining: the method (``mim``, ``regcon``, ``lrc``, ``glrp``) and its parameters."""

    steps: int = 1000
    method: str = "mim"
    method_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneOptions(TrainingOptions):
    """Fine-tuning on labels.

    Attributes
    ----------
    dense
        The labels are a full mask where 0 is a class (default: sparse, 0 = not annotated).
    class_names
        One name per class, in increasing label value.
    recipe, recipe_params
        ``auto``, ``strokes`` or ``dense`` (:mod:`~napari_regcon.core.recipes`) and its parameters.
    semi_params
        Parameters of the semi-supervised objective (used when unlabeled images are given).
    """

    dense: bool = False
    class_names: Sequence[str] | None = None
    recipe: str | Recipe | None = "auto"
    recipe_params: dict[str, Any] | None = None
    semi_params: dict[str, Any] | None = None


def with_fields(cls: type[Opts], options: Opts | None = None, **values: Any) -> Opts:
    """``options`` (default ``cls()``) with the given fields replaced; an unknown field is a TypeError."""
    return replace(options, **values) if options is not None else cls(**values)  # type: ignore[type-var]


def fill(cls: type[Opts], source: Any, **values: Any) -> Opts:
    """A ``cls`` whose fields are taken from the same-named attributes of ``source`` (e.g. an argparse
    namespace) where it has them, then from ``values``."""
    taken = {f.name: getattr(source, f.name) for f in fields(cls) if hasattr(source, f.name)}  # type: ignore[arg-type]
    return cls(**{**taken, **values})


def parse_patch(value: str | int | Sequence[int] | None, ndim: int) -> tuple[int, ...] | None:
    """Parse ``128`` or ``16,64,64`` into a per-axis patch (or tile) size for an ``ndim`` model."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parts = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            raise RegconError(f"Cannot read the patch size {value!r}; write e.g. 128 or 16,64,64.") from None
    elif isinstance(value, int):
        parts = [value]
    else:
        parts = [int(v) for v in value]
    if len(parts) == 1:
        parts = parts * 2 if ndim == 2 else [max(1, parts[0] // 4), parts[0], parts[0]]
    if len(parts) != ndim or any(p < 1 for p in parts):
        raise RegconError(f"The patch size {value!r} does not fit a {ndim}D model; give 1 or {ndim} positive numbers.")
    return tuple(parts)


def split_params(text: str) -> list[str]:
    """``"ratio=0.5, patch=[4,16,16]; mask=x"`` -> one item per parameter (commas inside brackets stay)."""
    items, depth, cur = [], 0, ""
    for ch in text.replace(";", ","):
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [t.strip() for t in items if t.strip()]


def parse_params(items: str | Iterable[str], option: str | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` items (or one text of them, see :func:`split_params`) -> a dict; values are read as
    JSON when they can be (numbers, lists, true/false), else kept as text; ``-`` in a key becomes ``_``.

    ``option`` names the command-line option the items came from, for the error message.
    """
    params: dict[str, Any] = {}
    for item in split_params(items) if isinstance(items, str) else items:
        if "=" not in item:
            if option is not None:
                raise RegconError(f"{option} expects KEY=VALUE, got {item!r}.")
            raise RegconError(f"Cannot read the method parameter {item!r}; write key=value, e.g. ratio=0.6.")
        key, value = (s.strip() for s in item.split("=", 1))
        key = key.replace("-", "_")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params
