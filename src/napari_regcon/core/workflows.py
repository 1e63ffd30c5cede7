"""High-level jobs shared by the CLI and the napari widgets: pretrain, fine-tune, predict.

Each front door passes arrays (numpy, dask, zarr) and plain parameters; nothing here knows
about layers or Qt. A :class:`Job` is built eagerly (so bad input fails before any training)
and then run as a generator of :class:`~napari_regcon.core.training.Progress` events whose
return value is the final model bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import make_bundle
from .drive import drive
from .errors import RegconError
from .inference import iter_predict
from .labels import build_labelset
from .models import (
    UNet,
    UNetConfig,
    anisotropic_pool_z,
    build_model,
    transferable_state,
)
from .normalize import Normalization, fit_normalization
from .pretext import get_pretext
from .pretext.base import Task
from .recipes import Recipe, choose_recipe
from .safety import load_resumed_weights
from .sampling import (
    PatchSampler,
    SemiSupervisedSampler,
    check_patch_size,
    default_patch_size,
    fit_patch,
)
from .semisupervised import SemiSupervisedTask
from .supervised import SupervisedTask
from .training import Progress, TrainConfig, iter_train, seed_everything
from .volume import Volume, as_volume


@dataclass
class Job:
    """A ready-to-run training job; ``run`` or iterate ``events`` to train."""

    model: UNet
    task: Task
    sampler: PatchSampler
    config: TrainConfig
    bundle_fn: Callable[[UNet, dict, dict], dict]
    resume: dict | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def events(self, out: str | Path | None = None, should_stop: Callable[[], bool] | None = None
               ) -> Generator[Progress, None, dict]:
        """Yield progress; the generator's return value is the final bundle."""
        return (yield from iter_train(self.model, self.task, self.sampler, self.config, bundle_fn=self.bundle_fn,
                                      out=out, should_stop=should_stop, resume=self.resume))

    def run(self, out: str | Path | None = None, should_stop: Callable[[], bool] | None = None,
            callback: Callable[[Progress], None] | None = None) -> dict:
        """Train to the end (or until ``should_stop``), returning the final bundle."""
        return drive(self.events(out, should_stop), callback)


def parse_patch(value: str | int | Sequence[int] | None, ndim: int) -> tuple[int, ...] | None:
    """Parse ``128`` or ``16,64,64`` into a per-axis patch size for an ``ndim`` model."""
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


def _volumes(images: Sequence[Any], channel_axis: int | None, ndim: int) -> list[Volume]:
    vols = [as_volume(im, channel_axis) for im in images]
    if ndim not in (2, 3):
        raise RegconError(f"--ndim must be 2 or 3, not {ndim}.")
    if ndim == 3:
        for v in vols:
            if not v.is_3d:
                raise RegconError(f"--ndim 3 needs a ZYX stack, but an image has shape {tuple(v.data.shape)} (2D); use --ndim 2.")
    return vols


def _patch(patch_size: Any, vols: list[Volume], ndim: int, cfg: UNetConfig | None,
           notes: list[str] | None = None) -> tuple[int, ...]:
    """The training patch: the one asked for (or the default), clipped to the smallest image.

    An axis longer than the image is cut to the image's size, rounded down to what the network
    needs (a multiple of 2**depth in Y/X, of the Z poolings of a given network in Z); the change is
    told in one sentence appended to ``notes``.
    """
    mult = 2 ** (cfg.depth if cfg else 3)
    patch = parse_patch(patch_size, ndim)
    smallest = tuple(min(v.shape[i + 1] for v in vols) for i in range(3))
    zdiv = cfg.divisor[0] if cfg is not None and cfg.ndim == 3 and ndim == 3 else 1
    patch, note = fit_patch(patch or default_patch_size(smallest, ndim, mult), smallest, ndim, mult, zdiv)
    if note and notes is not None:
        notes.append(note)
    check_patch_size(patch, [v.shape[1:] for v in vols], ndim)
    for p in patch[-2:]:
        if p % mult:
            raise RegconError(f"The patch size {patch} must be a multiple of {mult} in Y and X for this network.")
    return patch


def _config(ndim: int, channels: int, out: int, patch: tuple[int, ...], base: int, depth: int) -> UNetConfig:
    pool_z = anisotropic_pool_z(patch[0], depth) if ndim == 3 else []
    if ndim == 3 and any(pool_z):
        zdiv = 2 ** sum(pool_z)
        if patch[0] % zdiv:
            raise RegconError(f"The Z patch size {patch[0]} must be a multiple of {zdiv}.")
    return UNetConfig(ndim=ndim, in_channels=channels, out_channels=out, base=base, depth=depth, pool_z=pool_z)


def model_from_bundle(bundle: dict) -> UNet:
    """Rebuild the network of a bundle with its weights, in eval mode."""
    model = build_model(bundle["model"])
    model.load_state_dict(bundle["state_dict"])
    return model.eval()


def pretrain_job(images: Sequence[Any], method: str = "mim", *, ndim: int = 2, channel_axis: int | None = None,
                 patch_size: Any = None, steps: int = 1000, batch_size: int = 8, lr: float = 1e-3,
                 base: int = 16, depth: int = 3, seed: int = 0, device: str = "auto",
                 method_params: dict | None = None, resume: dict | None = None,
                 checkpoint_every: int = 100, sources: list[str] | None = None, precision: str = "auto") -> Job:
    """Build a self-supervised pretraining job on unlabeled ``images``."""
    if not images:
        raise RegconError("Give at least one image to pretrain on.")
    task = get_pretext(method, **(method_params or {}))
    vols = _volumes(images, channel_axis, ndim)
    for v in vols:
        task.check_input(v.shape, ndim)
    norm = fit_normalization(vols)
    notes: list[str] = []
    patch = _patch(patch_size, vols, ndim, UNetConfig(depth=depth), notes)
    cfg = _config(ndim, vols[0].shape[0], task.out_channels(vols[0].shape[0]), patch, base, depth)
    seed_everything(seed)
    model = build_model(cfg)
    if resume is not None:
        load_resumed_weights(model, resume)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                         weight_decay=0.05 if method == "mim" else 1e-4, checkpoint_every=checkpoint_every,
                         precision=precision)
    sampler = PatchSampler(vols, norm, patch, seed=seed)

    def bundle_fn(m: UNet, history: dict, state: dict) -> dict:
        return make_bundle("pretrained", cfg.to_dict(), m.state_dict(), norm.to_dict(),
                           pretext={"method": method, "params": task.params(), "transfer": list(task.transfer),
                                    "steps": state.get("step", 0)},
                           history=history, training=state,
                           data={"patch_size": list(patch), "channel_axis": channel_axis, "sources": sources or []})

    return Job(model, task, sampler, config, bundle_fn, resume["training"] if resume else None,
               {"patch": patch, "normalization": norm, "method": method, "notes": notes})


def finetune_job(image: Any, labels: Any, *, init: dict | None = None, dense: bool = False, ndim: int = 2,
                 channel_axis: int | None = None, patch_size: Any = None, steps: int = 400,
                 batch_size: int = 8, lr: float = 1e-3, base: int = 16, depth: int = 3, seed: int = 0,
                 device: str = "auto", class_names: Sequence[str] | None = None, resume: dict | None = None,
                 checkpoint_every: int = 100, unlabeled: Sequence[Any] | None = None,
                 sources: list[str] | None = None, semi_params: dict | None = None,
                 recipe: str | Recipe | None = "auto", recipe_params: dict | None = None,
                 precision: str = "auto") -> Job:
    """Build a fine-tuning job on ``labels`` (sparse: 0 = not annotated; ``dense``: 0 = a class).

    ``init`` is a bundle (pretrained or segmentation) whose architecture and transferable
    weights start the network; without it ``ndim``, ``base`` and ``depth`` define a fresh one.
    With ``unlabeled`` images the job is semi-supervised (:class:`SemiSupervisedTask`, options in
    ``semi_params``); their unannotated patches and the labeled image's are the unlabeled pool.
    ``recipe`` (:mod:`~napari_regcon.core.recipes`: ``auto``, ``strokes``, ``dense``) fits loss,
    sampling and stopping to the labels; ``auto`` picks ``strokes`` for sparse painting.
    """
    if init is not None:
        icfg = UNetConfig.from_dict(init["model"])
        ndim, base, depth = icfg.ndim, icfg.base, icfg.depth
    vol = _volumes([image], channel_axis, ndim)[0]
    labelset = build_labelset(labels, vol.spatial_shape, dense=dense, seed=seed)
    if class_names is not None and len(class_names) != labelset.n_classes:
        raise RegconError(f"{len(class_names)} class names were given for {labelset.n_classes} classes ({labelset.class_values}).")
    vols_u = _volumes(list(unlabeled), channel_axis, ndim) if unlabeled else []
    norm = fit_normalization([vol, *vols_u])
    notes: list[str] = []
    if init is not None:
        icfg = UNetConfig.from_dict(init["model"])
        if icfg.in_channels != vol.shape[0]:
            raise RegconError(f"The initial model expects {icfg.in_channels} channel(s) but the image has {vol.shape[0]}.")
        patch = _patch(patch_size or init.get("data", {}).get("patch_size"), [vol, *vols_u], ndim, icfg, notes)
        cfg = UNetConfig(ndim=ndim, in_channels=icfg.in_channels, out_channels=labelset.n_classes, base=base,
                         depth=depth, pool_z=list(icfg.pool_z))
    else:
        patch = _patch(patch_size, [vol, *vols_u], ndim, UNetConfig(depth=depth), notes)
        cfg = _config(ndim, vol.shape[0], labelset.n_classes, patch, base, depth)
    seed_everything(seed)
    model = build_model(cfg)
    pretext_info: dict = {}
    if resume is not None:
        load_resumed_weights(model, resume)
        pretext_info = dict(resume.get("pretext", {}))
    elif init is not None:
        load_init(model, init)
        pretext_info = dict(init.get("pretext", {}))
    chosen = choose_recipe(recipe, labelset, **(recipe_params or {}))
    lr = chosen.lr if chosen.lr is not None else lr
    if init is not None and init["kind"] == "segmentation" and resume is None:
        lr *= chosen.retrain_lr_scale  # continuing a model: a gentler step keeps what it learned
        if chosen.retrain_steps:
            steps = min(steps, chosen.retrain_steps)  # a correction round, not a new training
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                         checkpoint_every=checkpoint_every, ema=chosen.ema,
                         stop_when_stable=chosen.stop_when_stable, precision=precision)
    task: Task
    if vols_u:
        try:
            task = SemiSupervisedTask(labelset.n_classes, cfg, steps, seed=seed, **(semi_params or {}))
        except TypeError as err:
            raise RegconError(f"Bad semi-supervised parameter: {err}.") from None
        if init is not None and resume is None and task.net2_init == "same":
            load_init(task.net2, init)
        sampler: PatchSampler = SemiSupervisedSampler([vol], norm, patch, [labelset], [vol, *vols_u], seed=seed)
        pretext_info["finetune"] = {"method": task.name, "params": task.params(), "unlabeled_images": len(vols_u)}
    else:
        task = SupervisedTask(labelset.n_classes, **chosen.task_params())
        sampler = PatchSampler([vol], norm, patch, labels=[labelset], seed=seed,
                               uniform_fraction=chosen.uniform_fraction)
    names = list(class_names) if class_names else [f"class {v}" for v in labelset.class_values]
    classes = {"values": labelset.class_values, "names": names, "dense": dense}

    def bundle_fn(m: UNet, history: dict, state: dict) -> dict:
        return make_bundle("segmentation", cfg.to_dict(), m.state_dict(), norm.to_dict(), classes=classes,
                           pretext=pretext_info, history=history, training=state,
                           data={"patch_size": list(patch), "channel_axis": channel_axis, "sources": sources or [],
                                 "recipe": chosen.to_dict()})

    return Job(model, task, sampler, config, bundle_fn, resume["training"] if resume else None,
               {"patch": patch, "normalization": norm, "classes": classes, "labelset": labelset,
                "recipe": chosen, "notes": notes})


def load_init(model: UNet, init: dict) -> list[str]:
    """Load the transferable weights of ``init`` into ``model``; returns the keys left at random.

    From a pretrained bundle the encoder and decoder transfer and the head stays random; from a
    segmentation bundle with the same classes everything transfers (continue fine-tuning).
    """
    state = init["state_dict"]
    same_head = init["kind"] == "segmentation" and state.get("head.weight") is not None and \
        state["head.weight"].shape == model.head.weight.shape
    prefixes = tuple(init.get("pretext", {}).get("transfer", ("encoder.", "upsample.", "decoder."))) \
        if init["kind"] == "pretrained" else ("encoder.", "upsample.", "decoder.")
    chosen = dict(state) if same_head else transferable_state(state, prefixes)
    own = model.state_dict()
    for k, v in chosen.items():
        if k not in own or own[k].shape != v.shape:
            have, want = UNetConfig.from_dict(init["model"]), model.config
            raise RegconError(
                f"The --init bundle is a {init['kind']} {have.ndim}D network (base {have.base}, depth {have.depth}, "
                f"{have.in_channels} channel(s)) but this run needs a {want.ndim}D network (base {want.base}, depth "
                f"{want.depth}, {want.in_channels} channel(s)); start from a bundle made for this image type.")
    missing, unexpected = model.load_state_dict(chosen, strict=False)
    assert not unexpected
    return list(missing)


def predict_arrays(bundle: dict, image: Any, *, channel_axis: int | None = None, probabilities: bool = False,
                   out_labels: Any | None = None, out_probs: Any | None = None, tile: Any = None,
                   overlap: float = 0.25, batch_size: int = 4, device: str = "auto",
                   should_stop: Callable[[], bool] | None = None, zrange: tuple[int, int] | None = None,
                   skip: Any = None, on_unit_done: Callable[[int], None] | None = None,
                   ) -> Generator[Any, None, tuple[Any, Any]]:
    """Predict ``image`` with a segmentation bundle; yields progress, returns (labels, probabilities).

    Outputs go into ``out_labels`` / ``out_probs`` when given (e.g. zarr stores), else into new
    numpy arrays.
    """
    if bundle["kind"] != "segmentation":
        raise RegconError("This bundle is a pretrained (self-supervised) model without classes; fine-tune it on labels before predicting.")
    model = model_from_bundle(bundle)
    if channel_axis is None and model.config.in_channels > 1:
        channel_axis = bundle.get("data", {}).get("channel_axis")
    vol = as_volume(image, channel_axis)
    if vol.shape[0] != model.config.in_channels:
        raise RegconError(f"The model expects {model.config.in_channels} channel(s) but the image has shape {tuple(image.shape)}; check the channel axis.")
    norm = Normalization.from_dict(bundle["normalization"])
    values = [int(v) for v in bundle["classes"]["values"]]
    spatial = vol.spatial_shape
    if out_labels is None:
        out_labels = np.zeros(spatial, np.uint8 if max(values) < 256 else np.uint16)
    if probabilities and out_probs is None:
        out_probs = np.zeros((len(values), *spatial), np.float32)
    tile_t = parse_patch(tile, model.config.ndim) if tile is not None else None
    yield from iter_predict(model, vol, norm, out_labels, out_probs, values, tile=tile_t, overlap=overlap,
                           batch_size=batch_size, device=device, should_stop=should_stop, zrange=zrange,
                          skip=skip, on_unit_done=on_unit_done)
    return out_labels, out_probs


def run_predict(bundle: dict, image: Any, callback: Callable[[Any], None] | None = None, **kwargs: Any
                ) -> tuple[Any, Any]:
    """Consume :func:`predict_arrays` and return its result."""
    return drive(predict_arrays(bundle, image, **kwargs), callback)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
