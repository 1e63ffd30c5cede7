"""High-level jobs shared by the CLI and the napari widgets: pretrain and fine-tune.

Each front door passes arrays (numpy, dask, zarr) and plain parameters; nothing here knows
about layers or Qt. A :class:`Job` is built eagerly (so bad input fails before any training)
and then run as a generator of :class:`~napari_regcon.core.training.Progress` events whose
return value is the final model bundle. Prediction is :mod:`napari_regcon.core.predict`
(``predict_arrays`` and ``run_predict`` are importable from here too, as in earlier versions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import (
    DEFAULT_TRANSFER,
    Bundle,
    Classes,
    DataInfo,
    History,
    PretextInfo,
    SemiSupervisedInfo,
    TrainingInfo,
    as_bundle,
    cpu_weights,
)
from .checkpoint import save_bundle
from .drive import drive
from .errors import RegconError
from .filterbank import as_scales
from .labels import build_labelset
from .models import (
    UNet,
    UNetConfig,
    anisotropic_plan,
    anisotropic_pool_z,
    build_model,
    transferable_state,
)
from .normalize import fit_normalization, neighbour_contrast
from .options import FinetuneOptions, PretrainOptions, parse_patch, with_fields
from .predict import predict_arrays, run_predict  # noqa: F401  (the Python API of earlier versions)
from .pretext import get_pretext
from .pretext.base import Task
from .recipes import choose_recipe
from .safety import load_resumed_weights
from .sampling import (
    PatchSampler,
    SemiSupervisedSampler,
    check_patch_size,
    default_patch_size,
    fit_patch,
)
from .selftrain import planes_to_predict, pseudo_labels
from .semisupervised import SemiSupervisedTask
from .supervised import SupervisedTask
from .training import Progress, TrainConfig, iter_train, seed_everything
from .volume import Volume, as_volume, fingerprint


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
    #: True while ``model`` is a finished network that no step changes (a live preview of it need not be redone)
    model_frozen: bool = False

    def events(self, out: str | Path | None = None, should_stop: Callable[[], bool] | None = None
               ) -> Generator[Progress, None, dict]:
        """Yield progress; the generator's return value is the final bundle."""
        return (yield from iter_train(self.model, self.task, self.sampler, self.config, bundle_fn=self.bundle_fn,
                                      out=out, should_stop=should_stop, resume=self.resume))

    def run(self, out: str | Path | None = None, should_stop: Callable[[], bool] | None = None,
            callback: Callable[[Progress], None] | None = None) -> dict:
        """Train to the end (or until ``should_stop``), returning the final bundle."""
        return drive(self.events(out, should_stop), callback)

    @property
    def total_steps(self) -> int:
        """The step limit of the whole job, as its progress events count it."""
        return self.config.steps


@dataclass
class SelfTrainingJob(Job):
    """A fine-tune in two passes (:mod:`~napari_regcon.core.selftrain`): the job as asked, then ``second`` (built
    from the first pass's bundle) from the same start on the user's planes plus the first model's prediction of
    the others. Progress counts both passes as one run; stopped in the second pass, the first model is the
    result. Until the second pass ends, ``model`` is the first pass's (the live preview shows it)."""

    second: Callable[[dict], Job] | None = None
    second_steps: int = 0

    @property
    def total_steps(self) -> int:
        return self.config.steps + self.second_steps

    def events(self, out: str | Path | None = None, should_stop: Callable[[], bool] | None = None
               ) -> Generator[Progress, None, dict]:
        total, t0 = self.total_steps, time.perf_counter()
        state = {"cancelled": False, "offset": 0}

        def renumbered(gen: Generator[Progress, None, dict]) -> Generator[Progress, None, dict]:
            """The pass's events counted within the whole job; its own start / end are the job's only once."""
            while True:
                try:
                    ev = next(gen)
                except StopIteration as stop:
                    return stop.value
                if ev.event == ("start" if self.model_frozen else "done"):  # frozen: in the second pass
                    continue
                state["cancelled"] |= ev.event == "cancelled"
                step, elapsed = ev.step + state["offset"], time.perf_counter() - t0
                eta = elapsed / max(1, step) * (total - step) if ev.event == "step" and step > 0 else ev.eta
                yield replace(ev, step=step, total=total, elapsed=elapsed, eta=eta)

        first = yield from renumbered(super().events(out, should_stop))
        if state["cancelled"] or self.second is None or (should_stop is not None and should_stop()):
            return first
        job2 = self.second(first)
        state["offset"] = int(as_bundle(first).training.step)
        self.model_frozen = True  # ``model`` stays the first pass's finished network until the second ends
        # ``out`` keeps the first pass's finished bundle until the second ends (a resumed run redoes the second)
        result = yield from renumbered(job2.events(None, should_stop))
        self.model_frozen = False
        if state["cancelled"]:  # a half-trained second network is worse than the first: keep the first
            return first
        if out is not None:
            save_bundle(result, out)
        self.model, self.bundle_fn = job2.model, job2.bundle_fn
        return result


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


def _config(ndim: int, channels: int, out: int, patch: tuple[int, ...], base: int, depth: int,
            voxel_size: Sequence[float] | None = None, filter_scales: Sequence[float] = ()) -> UNetConfig:
    """A fresh network's architecture; in 3D with a known voxel size, in-plane convolutions and pooling at
    the levels where Z is much coarser than Y/X (:func:`~napari_regcon.core.models.anisotropic_plan`)."""
    pool_z: list[bool] = []
    conv_z: list[bool] = []
    if ndim == 3 and voxel_size is not None and len(voxel_size) == 3 and all(float(v) > 0 for v in voxel_size):
        pool_z, conv_z = anisotropic_plan(tuple(float(v) for v in voxel_size), depth, patch[0])
    elif ndim == 3:
        pool_z = anisotropic_pool_z(patch[0], depth)
    if ndim == 3 and any(pool_z):
        zdiv = 2 ** sum(pool_z)
        if patch[0] % zdiv:
            raise RegconError(f"The Z patch size {patch[0]} must be a multiple of {zdiv}.")
    return UNetConfig(ndim=ndim, in_channels=channels, out_channels=out, base=base, depth=depth, pool_z=pool_z,
                      conv_z=conv_z, filter_scales=list(filter_scales))


def model_from_bundle(bundle: Bundle | dict) -> UNet:
    """Rebuild the network of a bundle with its weights, in eval mode (:meth:`Bundle.build_model`)."""
    return as_bundle(bundle).build_model()


def pretrain_job(images: Sequence[Any], method: str | None = None, options: PretrainOptions | None = None, *,
                 resume: Bundle | dict | None = None, sources: list[str] | None = None, **fields: Any) -> Job:
    """Build a self-supervised pretraining job on unlabeled ``images``.

    ``options`` (:class:`~napari_regcon.core.options.PretrainOptions`), or its fields as keywords
    (``steps=...``), say how; ``method`` is a shortcut for ``options.method``. ``resume`` continues
    an interrupted run from its bundle; ``sources`` (file names) are recorded in the bundle.
    """
    if method is not None:
        fields["method"] = method
    o = with_fields(PretrainOptions, options, **fields)
    if not images:
        raise RegconError("Give at least one image to pretrain on.")
    task = get_pretext(o.method, **(o.method_params or {}))
    vols = _volumes(images, o.channel_axis, o.ndim)
    for v in vols:
        task.check_input(v.shape, o.ndim)
    norm = fit_normalization(vols)
    notes: list[str] = []
    patch = _patch(o.patch_size, vols, o.ndim, UNetConfig(depth=o.depth), notes)
    cfg = _config(o.ndim, vols[0].shape[0], task.out_channels(vols[0].shape[0]), patch, o.base_for(o.ndim),
                  o.depth, o.voxel_size)
    seed_everything(o.seed)
    model = build_model(cfg)
    if resume is not None:
        load_resumed_weights(model, resume)
    config = TrainConfig(steps=o.steps, batch_size=o.batch_for(o.ndim), lr=o.lr, seed=o.seed, device=o.device,
                         weight_decay=task.weight_decay, checkpoint_every=o.checkpoint_every, precision=o.precision)
    sampler = PatchSampler(vols, norm, patch, seed=o.seed)

    def bundle_fn(m: UNet, history: dict, state: dict) -> dict:
        return Bundle("pretrained", cfg, cpu_weights(m.state_dict()), norm,
                      pretext=PretextInfo(o.method, task.params(), list(task.transfer), state.get("step", 0)),
                      history=History.from_dict(history), training=TrainingInfo.from_dict(state),
                      data=DataInfo(list(patch), o.channel_axis, list(sources or []))).to_dict()

    return Job(model, task, sampler, config, bundle_fn, _resume_state(resume),
               {"patch": patch, "normalization": norm, "method": o.method, "notes": notes})


def finetune_job(image: Any, labels: Any, options: FinetuneOptions | None = None, *,
                 init: Bundle | dict | None = None, resume: Bundle | dict | None = None,
                 unlabeled: Sequence[Any] | None = None, sources: list[str] | None = None, **fields: Any) -> Job:
    """Build a fine-tuning job on ``labels`` (sparse: 0 = not annotated; ``dense``: 0 = a class).

    ``options`` (:class:`~napari_regcon.core.options.FinetuneOptions`), or its fields as keywords
    (``steps=...``), say how. ``init`` is a bundle (pretrained or segmentation) whose architecture
    and transferable weights start the network; without it ``ndim``, ``base`` and ``depth`` define
    a fresh one. With ``unlabeled`` images the job is semi-supervised (:class:`SemiSupervisedTask`,
    options in ``semi_params``); their unannotated patches and the labeled image's are the
    unlabeled pool. ``recipe`` (:mod:`~napari_regcon.core.recipes`: ``auto``, ``strokes``,
    ``dense``) fits loss, sampling and stopping to the labels; ``auto`` picks ``strokes`` for
    sparse painting. ``resume`` continues an interrupted run from its bundle.
    """
    o = with_fields(FinetuneOptions, options, **fields)
    ndim, base, depth = o.ndim, o.base_for(o.ndim), o.depth
    init_b = as_bundle(init) if init is not None else None
    resume_b = as_bundle(resume) if resume is not None else None
    if init_b is not None:
        icfg = init_b.model
        ndim, base, depth = icfg.ndim, icfg.base, icfg.depth
    vol = _volumes([image], o.channel_axis, ndim)[0]
    labelset = build_labelset(labels, vol.spatial_shape, dense=o.dense, seed=o.seed)
    if o.class_names is not None and len(o.class_names) != labelset.n_classes:
        raise RegconError(f"{len(o.class_names)} class names were given for {labelset.n_classes} classes ({labelset.class_values}).")
    vols_u = _volumes(list(unlabeled), o.channel_axis, ndim) if unlabeled else []
    norm = fit_normalization([vol, *vols_u])
    notes: list[str] = []
    name = o.recipe
    if resume_b is not None and (name or "auto") == "auto" and resume_b.data.recipe:
        name = resume_b.data.recipe.get("name", name)  # a resumed run keeps the recipe it ran with
    if init_b is not None:
        if icfg.in_channels != vol.shape[0]:
            raise RegconError(f"The initial model expects {icfg.in_channels} channel(s) but the image has {vol.shape[0]}.")
        patch = _patch(o.patch_size or init_b.data.patch_size, [vol, *vols_u], ndim, icfg, notes)
        cfg = UNetConfig(ndim=ndim, in_channels=icfg.in_channels, out_channels=labelset.n_classes, base=base,
                         depth=depth, pool_z=list(icfg.pool_z), conv_z=list(icfg.conv_z),
                         filter_scales=list(icfg.filter_scales))
    else:
        patch = _patch(o.patch_size, [vol, *vols_u], ndim, UNetConfig(depth=depth), notes)
        if resume_b is not None:
            scales = list(resume_b.model.filter_scales)  # the interrupted run's network
        else:
            scales = [] if vols_u else as_scales(choose_recipe(name, labelset, **(o.recipe_params or {})).filter_scales)
        cfg = _config(ndim, vol.shape[0], labelset.n_classes, patch, base, depth, o.voxel_size, scales)
    seed_everything(o.seed)
    model = build_model(cfg)
    pretext_info, semi_info = PretextInfo(), None
    if resume_b is not None:
        load_resumed_weights(model, resume_b)
        pretext_info, semi_info = resume_b.pretext, resume_b.semi_supervised
    continued = False  # every weight, the head included, comes from a segmentation model: a correction round
    if resume_b is None and init_b is not None:
        left_random = load_init(model, init_b)
        continued = init_b.is_segmentation and not left_random
        pretext_info, semi_info = init_b.pretext, init_b.semi_supervised
    chosen = choose_recipe(name, labelset, **(o.recipe_params or {}))
    if continued and chosen.retrain_as:  # a correction round on full masks has a recipe of its own
        chosen = choose_recipe(chosen.retrain_as, labelset, **(o.recipe_params or {}))
    if continued and chosen.retrain_smoothness is not None:
        chosen = replace(chosen, smoothness=chosen.retrain_smoothness)
    elif (not continued and ndim == 2 and chosen.faint_smoothness is not None and chosen.smoothness > 0
          and chosen.smooth_sigma > 0 and neighbour_contrast(vol, norm) < 0.5 * chosen.smooth_sigma):
        # the edge scale would see no edges; a 3D network is not changed: there the loop after a lighter
        # first run fell by up to 5.7 points a round (VesselNN 3D, benchmarks.md)
        chosen = replace(chosen, smoothness=chosen.faint_smoothness)
    lr = chosen.lr if chosen.lr is not None else o.lr
    steps = o.steps
    stop_rule: dict[str, int] = {}
    if init_b is not None and init_b.is_segmentation and resume is None:
        lr *= chosen.retrain_lr_scale  # continuing a model: a gentler step keeps what it learned
        if chosen.retrain_steps and steps > chosen.retrain_steps:
            steps = chosen.retrain_steps  # a correction round, not a new training
            notes.append(f"A correction round continues the current model: at most {steps} steps.")
        if chosen.retrain_check_every:  # it starts settled: look more often, so it can end sooner
            stop_rule = {"stable_every": chosen.retrain_check_every, "min_steps": 2 * chosen.retrain_check_every}
    config = TrainConfig(steps=steps, batch_size=o.batch_for(ndim), lr=lr, seed=o.seed, device=o.device,
                         checkpoint_every=o.checkpoint_every, ema=chosen.ema,
                         stop_when_stable=chosen.stop_when_stable, stable_tol=chosen.stable_tol,
                         schedule=chosen.schedule, precision=o.precision, **stop_rule,
                         encoder_lr_scale=chosen.encoder_lr_scale if init_b is not None and not init_b.is_segmentation else 1.0)
    task: Task
    if vols_u:
        try:
            task = SemiSupervisedTask(labelset.n_classes, cfg, steps, seed=o.seed, **(o.semi_params or {}))
        except TypeError as err:
            raise RegconError(f"Bad semi-supervised parameter: {err}.") from None
        if init_b is not None and resume is None and task.net2_init == "same":
            load_init(task.net2, init_b)
        sampler: PatchSampler = SemiSupervisedSampler([vol], norm, patch, [labelset], [vol, *vols_u], seed=o.seed)
        semi_info = SemiSupervisedInfo(task.name, task.params(), len(vols_u))
    else:
        params = chosen.task_params()
        if chosen.smoothness > 0 and chosen.smooth_sigma <= 0:  # edges on the image's own contrast scale,
            params["smooth_sigma"] = float(np.clip(neighbour_contrast(vol, norm), 0.005, 1.0))
            params["edges_from_image"] = True  # seen before the intensity jitter (measured: not the default)
        task = SupervisedTask(labelset.n_classes, **params)
        if chosen.distill > 0 and continued:
            teacher = build_model(cfg)
            teacher.load_state_dict(model.state_dict())
            task.set_teacher(teacher)  # a correction round: keep what the user did not repaint
        sampler = PatchSampler([vol], norm, patch, labels=[labelset], seed=o.seed,
                               uniform_fraction=chosen.uniform_fraction, plane_fraction=chosen.plane_fraction)
    names = list(o.class_names) if o.class_names else [f"class {v}" for v in labelset.class_values]
    offset = None if vols_u else chosen.logit_offset(labelset)
    classes = Classes([int(v) for v in labelset.class_values], names, o.dense, logit_offset=offset,
                      offset_for=fingerprint(vol) if offset is not None else None)

    def bundle_fn(m: UNet, history: dict, state: dict) -> dict:
        return Bundle("segmentation", cfg, cpu_weights(m.state_dict()), norm, classes=classes, pretext=pretext_info,
                      semi_supervised=semi_info, history=History.from_dict(history),
                      training=TrainingInfo.from_dict(state),
                      data=DataInfo(list(patch), o.channel_axis, list(sources or []), chosen.to_dict())).to_dict()

    info = {"patch": patch, "normalization": norm, "classes": classes, "labelset": labelset, "recipe": chosen,
            "notes": notes}
    planes = planes_to_predict(labels) if (chosen.self_train and ndim == 2 and vol.is_3d and not o.dense
                                           and labelset.plane_share < 1
                                           and not (init_b is not None and init_b.is_segmentation)
                                           and not (resume_b is not None and resume_b.data.self_trained)
                                           and not vols_u) else np.zeros(0, np.int64)
    if not len(planes):
        return Job(model, task, sampler, config, bundle_fn, _resume_state(resume_b), info)

    def second(first: dict) -> Job:
        """The second pass: the first model's classes on ``planes``, then the same start and steps on all of it."""
        pred, _ = run_predict(first, _take_planes(vol, planes), channel_axis=o.channel_axis,
                              device=o.device, precision=o.precision, class_prior="on")  # (the labeled image's planes)
        job2 = finetune_job(image, pseudo_labels(labels, planes, pred),
                            replace(o, recipe_params={**(o.recipe_params or {}), "self_train": False},
                                    recipe=name or "auto"), init=init, sources=sources)
        fn2 = job2.bundle_fn

        def bundle_fn2(m: UNet, history: dict, state: dict) -> dict:
            out = fn2(m, history, state)  # the first pass's classes: its prior is the user's labels' prior
            out["classes"] = classes.to_dict()
            out["data"] = {**out["data"], "recipe": chosen.to_dict(), "self_trained": True}
            return out

        job2.bundle_fn = bundle_fn2
        return job2

    notes.append(f"Two passes (self-training): a second pass learns from the first model's answer on {len(planes)} "
                 f"unlabeled plane(s); {steps} steps each.")
    return SelfTrainingJob(model, task, sampler, config, bundle_fn, _resume_state(resume_b), info, second=second,
                           second_steps=steps)


def _take_planes(vol: Volume, planes: np.ndarray) -> np.ndarray:
    """The Z planes ``planes`` of a stack as stored (its channel axis where it was), read one at a time (numpy,
    dask or zarr)."""
    z = vol.spatial_axes[0]
    return np.stack([np.asarray(vol.data[(slice(None),) * z + (int(i),)]) for i in planes], axis=z)


def _resume_state(resume: Bundle | dict | None) -> dict | None:
    """The ``training`` section a resumed run continues from (as the training loop reads it)."""
    return as_bundle(resume).training.to_dict() if resume is not None else None


def load_init(model: UNet, init: Bundle | dict) -> list[str]:
    """Load the transferable weights of ``init`` into ``model``; returns the keys left at random.

    From a pretrained bundle the encoder and decoder transfer and the head stays random; from a
    segmentation bundle with the same classes everything transfers (continue fine-tuning).
    """
    init = as_bundle(init)
    state = init.state_dict
    same_head = init.is_segmentation and state.get("head.weight") is not None and \
        state["head.weight"].shape == model.head.weight.shape
    prefixes = init.pretext.transfer_prefixes if init.kind == "pretrained" else DEFAULT_TRANSFER
    chosen = dict(state) if same_head else transferable_state(state, prefixes)
    own = model.state_dict()
    for k, v in chosen.items():
        if k not in own or own[k].shape != v.shape:
            have, want = init.model, model.config
            raise RegconError(
                f"The --init bundle is a {init.kind} {have.ndim}D network (base {have.base}, depth {have.depth}, "
                f"{have.in_channels} channel(s)) but this run needs a {want.ndim}D network (base {want.base}, depth "
                f"{want.depth}, {want.in_channels} channel(s)); start from a bundle made for this image type.")
    missing, unexpected = model.load_state_dict(chosen, strict=False)
    assert not unexpected
    return list(missing)
