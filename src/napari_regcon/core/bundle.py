"""THE model bundle, typed: what a bundle holds and the rules that follow from it.

On disk (and between the jobs, the CLI and the widgets) a bundle is a plain dict of dicts, lists,
numbers, strings and tensors, so that ``torch.load(weights_only=True)`` reads it and a file from a
stranger can never run code (:mod:`.checkpoint` saves and loads it). :class:`Bundle` is its typed
form: :meth:`Bundle.from_dict` reads (and checks) a dict, :meth:`Bundle.to_dict` writes the same
layout back, and everything that reads a bundle goes through it: the network it builds
(:meth:`Bundle.build_model`), the channel axis an image is read with (:meth:`Bundle.channel_axis`),
the dtype of its label images (:attr:`Bundle.label_dtype`).

Layout (version 1, unchanged since 0.1.0)::

    format, version, kind ("pretrained" | "segmentation"), created, software
    model          UNetConfig            the architecture
    state_dict     {name: tensor}        the weights
    normalization  Normalization         percentile normalisation of the training images
    classes        Classes               label values and names (segmentation); an optional logit
                                         offset added at prediction (older readers keep and ignore it)
    pretext        PretextInfo           the self-supervised method; "finetune" inside it holds the
                                         SemiSupervisedInfo of a semi-supervised fine-tuning
    history        History               loss per step
    training       TrainingInfo          step and the state an interrupted run resumes from
    data           DataInfo              patch size, channel axis, source files, recipe

Keys a section does not know are kept (``extra``) and written back, so a bundle annotated by a
script (e.g. the benchmarks' timings under ``training``) survives a round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import RegconError
from .models import UNet, UNetConfig, build_model
from .normalize import Normalization

FORMAT = "napari-regcon-bundle"
VERSION = 1
KINDS = ("pretrained", "segmentation")
REQUIRED = ("format", "version", "kind", "model", "state_dict", "normalization")
DEFAULT_TRANSFER = ("encoder.", "upsample.", "decoder.")


class _Malformed(Exception):
    """A section of a bundle dict does not have the expected types (turned into a RegconError)."""


def _section(d: Any, name: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise _Malformed(f"{name} is not a table")
    return d


def _int(v: Any, name: str, optional: bool = True) -> int | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise _Malformed(f"{name} is not an integer")
    return int(v)


def _ints(v: Any, name: str) -> list[int]:
    if not isinstance(v, (list, tuple)):
        raise _Malformed(f"{name} is not a list")
    return [_int(x, name, optional=False) for x in v]  # type: ignore[misc]


def _strs(v: Any, name: str) -> list[str]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise _Malformed(f"{name} is not a list of strings")
    return list(v)


def _floats(v: Any, name: str) -> list[float] | None:
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in v):
        raise _Malformed(f"{name} is not a list of numbers")
    return [float(x) for x in v]


def _table(v: Any, name: str) -> dict | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _Malformed(f"{name} is not a table")
    return v


class _Section:
    """A bundle section: known fields plus ``extra`` (unknown keys, kept); None fields are not written."""

    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)  # type: ignore[arg-type]
               if f.name != "extra" and getattr(self, f.name) is not None}
        out.update(self.extra)
        return out

    @classmethod
    def _extra(cls, d: dict) -> dict[str, Any]:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return {k: v for k, v in d.items() if k not in known}


@dataclass
class Classes(_Section):
    """Labels info: the label values the model predicts (in head order), their names, dense or sparse,
    and ``logit_offset``: added to the head's logits at prediction (not in training), e.g. a share of
    the labels' log class prior on a model trained with the classes weighed alike. ``offset_for`` is the
    :func:`~napari_regcon.core.volume.fingerprint` of the labeled image: the prior is evidence about that
    image's unlabeled planes, not about another stack, so prediction adds the offset only there (bundles
    without it add it everywhere, as they did)."""

    values: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    dense: bool | None = None
    logit_offset: list[float] | None = None
    offset_for: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> Classes:
        d = _section(d, "classes")
        dense = d.get("dense")
        offset_for = d.get("offset_for")
        if offset_for is not None and not isinstance(offset_for, str):
            raise RegconError("classes.offset_for must be a text (an image fingerprint).")
        return cls(_ints(d.get("values", []), "classes.values"), _strs(d.get("names", []), "classes.names"),
                   None if dense is None else bool(dense), _floats(d.get("logit_offset"), "classes.logit_offset"),
                   offset_for, cls._extra(d))

    def name_of(self, value: int) -> str:
        """The name of a label value (``class V`` when the bundle does not name it)."""
        named = dict(zip(self.values, self.names))
        return named.get(int(value), f"class {value}")


@dataclass
class SemiSupervisedInfo(_Section):
    """How a semi-supervised fine-tuning ran (stored under ``pretext["finetune"]``)."""

    method: str | None = None
    params: dict[str, Any] | None = None
    unlabeled_images: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> SemiSupervisedInfo:
        d = _section(d, "pretext.finetune")
        return cls(d.get("method"), _table(d.get("params"), "pretext.finetune.params"),
                   _int(d.get("unlabeled_images"), "pretext.finetune.unlabeled_images"), cls._extra(d))


@dataclass
class PretextInfo(_Section):
    """The self-supervised pretraining a network comes from (a fine-tuned bundle keeps its init's)."""

    method: str | None = None
    params: dict[str, Any] | None = None
    transfer: list[str] | None = None
    steps: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> PretextInfo:
        d = _section(d, "pretext")
        method = d.get("method")
        if method is not None and not isinstance(method, str):
            raise _Malformed("pretext.method is not a string")
        transfer = d.get("transfer")
        extra = {k: v for k, v in cls._extra(d).items() if k != "finetune"}
        return cls(method, _table(d.get("params"), "pretext.params"),
                   None if transfer is None else _strs(transfer, "pretext.transfer"),
                   _int(d.get("steps"), "pretext.steps"), extra)

    @property
    def transfer_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes that carry over to fine-tuning."""
        return tuple(self.transfer) if self.transfer is not None else DEFAULT_TRANSFER


@dataclass
class History(_Section):
    """The loss per step of the run that made the bundle."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> History:
        d = _section(d, "history")
        step, loss = d.get("step", []), d.get("loss", [])
        if not isinstance(step, (list, tuple)) or not isinstance(loss, (list, tuple)):
            raise _Malformed("history is not lists of steps and losses")
        return cls(list(step), list(loss), cls._extra(d))

    @property
    def final_loss(self) -> float | None:
        return self.loss[-1] if self.loss else None


@dataclass
class TrainingInfo(_Section):
    """Training info: the step reached and the state an interrupted run resumes from
    (written by :func:`~napari_regcon.core.training.iter_train`, read back by ``resume``)."""

    step: int | None = None
    total_steps: int | None = None
    config: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    task_state: Any = None
    rng: dict[str, Any] | None = None
    sampler_rng: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> TrainingInfo:
        d = _section(d, "training")
        return cls(_int(d.get("step"), "training.step"), _int(d.get("total_steps"), "training.total_steps"),
                   _table(d.get("config"), "training.config"), _table(d.get("optimizer"), "training.optimizer"),
                   _table(d.get("scheduler"), "training.scheduler"), d.get("task_state"),
                   _table(d.get("rng"), "training.rng"), _table(d.get("sampler_rng"), "training.sampler_rng"),
                   _table(d.get("history"), "training.history"), cls._extra(d))

    @property
    def resumable(self) -> bool:
        """True when the bundle holds the state to continue its run (``--resume``)."""
        return self.optimizer is not None and self.step is not None


@dataclass
class DataInfo(_Section):
    """What the network was trained on: patch size, channel axis, source files, fine-tuning recipe, and whether
    it is the second pass of a self-training run (its labels partly the first pass's answer)."""

    patch_size: list[int] | None = None
    channel_axis: int | None = None
    sources: list[str] = field(default_factory=list)
    recipe: dict[str, Any] | None = None
    self_trained: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> DataInfo:
        d = _section(d, "data")
        patch = d.get("patch_size")
        return cls(None if patch is None else _ints(patch, "data.patch_size"),
                   _int(d.get("channel_axis"), "data.channel_axis"),
                   [str(s) for s in d.get("sources") or []], _table(d.get("recipe"), "data.recipe"),
                   bool(d.get("self_trained", False)), cls._extra(d))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"patch_size": self.patch_size, "channel_axis": self.channel_axis, "sources": self.sources}
        if self.recipe is not None:
            out["recipe"] = self.recipe
        if self.self_trained:
            out["self_trained"] = True
        out.update(self.extra)
        return out


def software_versions() -> dict[str, str]:
    """The versions recorded in a new bundle."""
    from .. import __version__
    return {"napari-regcon": str(__version__), "torch": str(torch.__version__)}


def timestamp() -> str:
    """The ``created`` time of a new bundle."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def cpu_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of a state dict, as a bundle stores them."""
    return {k: v.detach().cpu().clone() for k, v in state_dict.items()}


@dataclass
class Bundle:
    """A model bundle (see the module docstring for the layout)."""

    kind: str
    model: UNetConfig
    state_dict: dict[str, torch.Tensor]
    normalization: Normalization | None
    classes: Classes = field(default_factory=Classes)
    pretext: PretextInfo = field(default_factory=PretextInfo)
    semi_supervised: SemiSupervisedInfo | None = None
    history: History = field(default_factory=History)
    training: TrainingInfo = field(default_factory=TrainingInfo)
    data: DataInfo = field(default_factory=DataInfo)
    created: str = field(default_factory=timestamp)
    software: dict[str, str] = field(default_factory=software_versions)
    format: str = FORMAT
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- reading and writing the plain-data form --------------------------------------------
    @classmethod
    def from_dict(cls, d: Any, path: str | Path = "bundle") -> Bundle:
        """Read a bundle dict (as loaded by ``torch.load``); RegconError, naming ``path``, if it is not one."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise RegconError(f"{path} is not a napari-regcon bundle (foreign file format).")
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise RegconError(f"{path} is an incomplete napari-regcon bundle (missing {', '.join(missing)}).")
        try:
            version = int(d["version"])
        except (TypeError, ValueError):
            raise RegconError(f"{path} has an unreadable bundle version {d['version']!r}.") from None
        if version > VERSION:
            raise RegconError(f"{path} was written by a newer napari-regcon (bundle version {d['version']}); please upgrade.")
        if d["kind"] not in KINDS:
            raise RegconError(f"{path} has an unknown kind {d['kind']!r}.")
        state = d["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise RegconError(f"{path} has malformed weights.")
        try:
            try:
                model = UNetConfig.from_dict(_section(d["model"], "model"))
            except (RegconError, TypeError, ValueError):
                raise _Malformed("model is not a valid U-Net configuration") from None
            norm_d = _section(d["normalization"], "normalization")
            normalization = None
            if "low" in norm_d or "high" in norm_d:
                normalization = Normalization.from_dict(norm_d)
            pretext_d = _section(d.get("pretext"), "pretext")
            semi = pretext_d.get("finetune")
            known = {f.name for f in fields(cls)}
            return cls(kind=d["kind"], model=model, state_dict=state, normalization=normalization,
                       classes=Classes.from_dict(d.get("classes")), pretext=PretextInfo.from_dict(pretext_d),
                       semi_supervised=None if semi is None else SemiSupervisedInfo.from_dict(semi),
                       history=History.from_dict(d.get("history")), training=TrainingInfo.from_dict(d.get("training")),
                       data=DataInfo.from_dict(d.get("data")), created=str(d.get("created", "")),
                       software=dict(_section(d.get("software"), "software")), format=FORMAT, version=version,
                       extra={k: v for k, v in d.items() if k not in known})
        except KeyError as err:
            raise RegconError(f"{path} is a malformed napari-regcon bundle (missing {err.args[0]}).") from None
        except (_Malformed, TypeError, ValueError) as err:
            detail = str(err) or type(err).__name__
            raise RegconError(f"{path} is a malformed napari-regcon bundle ({detail}).") from None

    def to_dict(self) -> dict[str, Any]:
        """The plain-data form (what is saved); tensors are shared, not copied."""
        pretext = self.pretext.to_dict()
        if self.semi_supervised is not None:
            pretext["finetune"] = self.semi_supervised.to_dict()
        out = {
            "format": self.format, "version": self.version, "kind": self.kind, "created": self.created,
            "software": dict(self.software), "model": self.model.to_dict(), "state_dict": self.state_dict,
            "normalization": self.normalization.to_dict() if self.normalization is not None else {},
            "classes": self.classes.to_dict(), "pretext": pretext, "history": self.history.to_dict(),
            "training": self.training.to_dict(), "data": self.data.to_dict(),
        }
        out.update(self.extra)
        return out

    def validate(self, path: str | Path = "bundle") -> Bundle:
        """Check that the parts agree with each other (what prediction, resume and export rely on)."""
        cfg, norm = self.model, self.normalization
        if norm is not None and not len(norm.low) == len(norm.high) == cfg.in_channels:
            raise RegconError(f"{path} is a malformed napari-regcon bundle (its normalisation is for "
                              f"{len(norm.low)} channel(s), its network for {cfg.in_channels}).")
        if self.is_segmentation:
            if norm is None:
                raise RegconError(f"{path} is an incomplete napari-regcon bundle (no intensity normalisation).")
            if len(self.classes.values) != cfg.out_channels:
                raise RegconError(f"{path} is a malformed napari-regcon bundle ({len(self.classes.values)} label "
                                  f"values for a network with {cfg.out_channels} outputs).")
            if self.classes.names and len(self.classes.names) != len(self.classes.values):
                raise RegconError(f"{path} is a malformed napari-regcon bundle ({len(self.classes.names)} class "
                                  f"names for {len(self.classes.values)} label values).")
            offset = self.classes.logit_offset
            if offset is not None and len(offset) != len(self.classes.values):
                raise RegconError(f"{path} is a malformed napari-regcon bundle ({len(offset)} logit offsets for "
                                  f"{len(self.classes.values)} label values).")
            if any(v < 0 or v > 65535 for v in self.classes.values):
                raise RegconError(f"{path} is a malformed napari-regcon bundle (label values outside 0..65535).")
        if len(self.history.step) != len(self.history.loss):
            raise RegconError(f"{path} is a malformed napari-regcon bundle (its history has "
                              f"{len(self.history.step)} steps but {len(self.history.loss)} losses).")
        return self

    # ---- what the bundle implies -------------------------------------------------------------
    @property
    def is_segmentation(self) -> bool:
        """True for a fine-tuned model with classes (``pretrained`` bundles only start a fine-tuning)."""
        return self.kind == "segmentation"

    def build_model(self, with_offset: bool = True) -> UNet:
        """The network of the bundle with its weights, in eval mode, for prediction: the classes'
        ``logit_offset`` is added to the head's bias unless ``with_offset`` is False (training
        continues from :attr:`state_dict`)."""
        model = build_model(self.model)
        model.load_state_dict(self.state_dict)
        offset = self.classes.logit_offset
        if with_offset and offset is not None and model.head.bias is not None:
            with torch.no_grad():
                model.head.bias += torch.tensor(offset, dtype=model.head.bias.dtype)
        return model.eval()

    def channel_axis(self, given: int | None = None) -> int | None:
        """The channel axis to read an image with: the one given, else (for a multi-channel network)
        the axis the training image had."""
        if given is None and self.model.in_channels > 1:
            return self.data.channel_axis
        return given

    @property
    def label_dtype(self) -> np.dtype:
        """The dtype of predicted label images: uint8 when every label value fits, else uint16."""
        values = self.classes.values
        return np.dtype(np.uint8 if not values or max(values) < 256 else np.uint16)

    def describe(self) -> dict[str, Any]:
        """The metadata ``napari-regcon info`` prints (everything but weights and training state)."""
        d = self.to_dict()
        summary = {k: d[k] for k in ("format", "version", "kind", "created", "software", "model", "classes",
                                     "pretext", "data")}
        summary["steps"] = self.training.step
        summary["final_loss"] = self.history.final_loss
        return summary


def as_bundle(bundle: Bundle | dict, path: str | Path = "bundle") -> Bundle:
    """The typed form of a bundle given as a dict (checked) or already as a :class:`Bundle`."""
    return bundle if isinstance(bundle, Bundle) else Bundle.from_dict(bundle, path)
