"""The generator functions the widgets run in napari thread workers.

They take arrays and plain parameter dataclasses (never layers or widgets), drive the core
generators (``pretrain_job(...).events``, ``finetune_job(...).events``, ``core.predict.predict_events``),
and yield typed updates (:mod:`.updates`). Errors never escape: they are turned into a
one-sentence :class:`~.updates.Failed` update, so the viewer shows one clear notification.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from napari_regcon.core.bundle import as_bundle
from napari_regcon.core.device import describe_device, get_device
from napari_regcon.core.drive import relay
from napari_regcon.core.errors import RegconError, is_out_of_memory
from napari_regcon.core.inference import PredictEvent
from napari_regcon.core.options import FinetuneOptions, PretrainOptions
from napari_regcon.core.predict import PredictOptions, class_prior_applies, predict, predict_events
from napari_regcon.core.volume import as_volume
from napari_regcon.core.workflows import Job, finetune_job, pretrain_job

from .state import PlaneTracker
from .updates import (
    Failed,
    Finished,
    PhaseUpdate,
    PredictProgress,
    PredictResult,
    PreviewUpdate,
    Started,
    StepUpdate,
    Update,
)

log = logging.getLogger("napari_regcon")

#: Minimum seconds between two progress updates sent to the GUI (each one costs a repaint).
UPDATE_EVERY = 0.5
#: Environment variable overriding the CPU threads a widget run uses (default: all cores but one).
THREADS_ENV = "NAPARI_REGCON_THREADS"


@dataclass
class FinetuneParams:
    """What the Fine-tune widget hands its worker: the training options, and what only the widget has
    (the start bundle, class names by label value, unlabeled layers, the live preview)."""

    options: FinetuneOptions = field(default_factory=FinetuneOptions)
    init: dict | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    unlabeled: list[Any] = field(default_factory=list)
    preview: bool = True
    preview_every: float = 3.0


def user_message(exc: BaseException) -> str:
    """One sentence for a notification; unexpected errors are also logged with their traceback."""
    if isinstance(exc, RegconError):
        return str(exc)
    text = str(exc).strip()
    if is_out_of_memory(exc):
        return "Out of memory: lower the patch size, batch size or tile size, close other programs, and try again."
    log.error("napari-regcon: unexpected error in a background run", exc_info=exc)
    first = text.splitlines()[0] if text else ""
    return f"Unexpected error ({type(exc).__name__}{': ' + first if first else ''}); details are in the terminal."


def _device_name(device: str) -> str:
    try:
        dev = get_device(device)
    except RegconError:
        return device
    if dev.type == "cpu":
        n = torch.get_num_threads()
        return f"CPU ({n} thread{'s' if n > 1 else ''})"
    return describe_device(dev)


def cpu_threads() -> int:
    """Torch threads for a run started from the viewer: all cores but one, left to the GUI."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 2) - 1)


@contextlib.contextmanager
def _threads_for(device: str) -> Iterator[None]:
    """On CPU, train with :func:`cpu_threads` threads (restored afterwards) so the viewer keeps a core.

    With every core busy in torch, the event loop and the canvas (software-rendered on many
    machines) wait for CPU time; measured in benchmarks/gui_responsiveness.py.
    """
    try:
        on_cpu = get_device(device).type == "cpu"
    except RegconError:
        on_cpu = False
    old = torch.get_num_threads()
    if on_cpu:
        torch.set_num_threads(cpu_threads())
    try:
        yield
    finally:
        if on_cpu:
            torch.set_num_threads(old)


#: the progress line's words for the second pass of self-training (core/selftrain.py)
SECOND_PASS = "second pass: learning from the first model's answer"


def _relay(job: Job, stop: threading.Event, extra: Callable[[], Update | None] | None = None
           ) -> Iterator[Update]:
    """Run ``job`` and relay its events, batching step events to at most one per UPDATE_EVERY."""
    pending: list[tuple[int, float]] = []
    last = 0.0
    cancelled = False
    message = ""
    second = False  # the second pass (self-training) has been announced

    def handle(ev: Any) -> Iterator[Update]:
        nonlocal pending, last, cancelled, message, second
        if ev.event == "start":
            yield Started(ev.total, f"{_device_name(job.config.device)}, {ev.precision}", detail=str(ev.device),
                          note=" ".join(job.info.get("notes", [])))
        elif ev.event == "step":
            if job.model_frozen and not second:  # the first network is done; a second one starts learning
                second = True
                yield PhaseUpdate(ev.step - 1, SECOND_PASS)
            pending.append((ev.step, ev.loss))
            now = time.monotonic()
            if now - last >= UPDATE_EVERY or ev.step == ev.total:
                yield StepUpdate(ev.step, ev.total, ev.loss, ev.eta, pending)
                pending, last = [], now
            if extra is not None:
                upd = extra()
                if upd is not None:
                    yield upd
        elif ev.event == "cancelled":
            cancelled = True
        elif ev.event == "done" and ev.reason == "stable":
            message = (f"ended by itself after {ev.step} of {ev.total} steps: the prediction stopped changing "
                       "(raise Steps or train again for more)")

    bundle = yield from relay(job.events(should_stop=stop.is_set), handle)
    if pending:
        step, loss = pending[-1]
        yield StepUpdate(step, job.total_steps, loss, 0.0, pending)
    if isinstance(extra, _Previewer) and not cancelled:
        upd = extra(force=True)  # the finished model on the plane in view, however short the run
        if upd is not None:
            yield upd
    yield Finished(bundle, cancelled=cancelled, message=message)


def _guarded(body: Iterator[Update], device: str) -> Iterator[Update]:
    """Run a worker body with the CPU thread policy; any exception becomes one Failed update."""
    try:
        with _threads_for(device):
            yield from body
    except Exception as exc:  # noqa: BLE001 - every failure becomes one notification
        yield Failed(user_message(exc))


def pretrain_updates(images: Sequence[Any], options: PretrainOptions, stop: threading.Event
                     ) -> Iterator[Update]:
    """Worker body of the Pretrain widget."""
    yield from _guarded(_pretrain(images, options, stop), options.device)


def _pretrain(images: Sequence[Any], options: PretrainOptions, stop: threading.Event) -> Iterator[Update]:
    job = pretrain_job(list(images), options=replace(options, checkpoint_every=0))
    yield from _relay(job, stop)


def warm_up() -> None:
    """Do once, in the background when the widget opens, the imports a first run would otherwise do
    mid-run: torch's first optimizer imports ``torch._dynamo`` (~1 s, partly holding the GIL, which
    stalled the viewer ~60 ms in benchmarks/gui_responsiveness.py), and the pretexts import
    scikit-image and SciPy."""
    import napari_regcon.core.pretext  # noqa: F401  (every method, with its dependencies)
    from napari_regcon.core.models import UNetConfig, build_model

    model = build_model(UNetConfig(ndim=2, base=4, depth=1, out_channels=2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 1, 16, 16)).sum().backward()
    opt.step()


def _z_axis(image: Any, channel_axis: int | None) -> int | None:
    vol = as_volume(image, channel_axis)
    return vol.spatial_axes[0] if vol.is_3d else None


def predict_plane(bundle: dict, image: Any, channel_axis: int | None, z: int | None, depth: int = 1,
                  device: str = "auto") -> tuple[int | None, np.ndarray]:
    """Predict the plane ``z`` of ``image`` (or the whole 2D image); returns (plane, labels).

    Only a slab of ``depth`` planes around ``z`` is read (``depth`` > 1 for 3D models), so the
    cost does not grow with the stack.
    """
    axis = _z_axis(image, channel_axis)
    if axis is None:
        return None, predict(bundle, image, _preview_options(bundle, image, channel_axis, device)).labels
    typed = as_bundle(bundle)  # the slab is not the image: ask of the whole image whether its prior applies
    prior = "on" if class_prior_applies(typed, as_volume(image, typed.channel_axis(channel_axis))) else "off"
    nz = int(image.shape[axis])
    z = min(max(int(z or 0), 0), nz - 1)
    depth = min(max(1, depth), nz)
    z0 = min(max(0, z - depth // 2), nz - depth)
    index = [slice(None)] * len(image.shape)
    index[axis] = slice(z0, z0 + depth)
    slab = image[tuple(index)]
    labels = predict(bundle, slab, replace(_preview_options(bundle, slab, channel_axis, device), class_prior=prior)).labels
    return z, np.asarray(labels[z - z0])


PREVIEW_MAX_PLANE = 1024 * 1024


def _preview_options(bundle: dict, image: Any, channel_axis: int | None, device: str) -> PredictOptions:
    """One tile covering a preview plane (a single forward pass) when it fits (<= 1024²): no
    overlapping tiles to compute twice, so the preview takes about half the time of a tiled one."""
    options = PredictOptions(channel_axis=channel_axis, device=device)
    spatial = as_volume(image, channel_axis).spatial_shape
    if spatial[-1] * spatial[-2] > PREVIEW_MAX_PLANE:
        return options
    tile = spatial[-2:] if as_bundle(bundle).model.ndim == 2 else spatial[-3:]
    return replace(options, tile=tuple(int(t) for t in tile), overlap=0.0)


class _Previewer:
    """Between training steps, every few seconds, predict the plane in view with the current weights."""

    def __init__(self, job: Job, image: Any, params: FinetuneParams, plane: PlaneTracker,
                 enabled: threading.Event) -> None:
        self.job, self.image, self.params = job, image, params
        self.plane, self.enabled = plane, enabled
        patch = job.info.get("patch", (1,))
        self.depth = int(patch[0]) if job.model.config.ndim == 3 else 1
        self.next_at = time.monotonic() + min(1.0, params.preview_every)
        self.frozen_plane: tuple[int | None] | None = None  # (plane,) last previewed with a model no step changes

    def __call__(self, force: bool = False) -> PreviewUpdate | None:
        now = time.monotonic()
        if not self.enabled.is_set() or (now < self.next_at and not force):
            return None
        at = self.plane.get()
        if self.job.model_frozen and not force and self.frozen_plane == (at,):
            return None  # the same model on the same plane: the preview in view is already its answer
        bundle = self.job.bundle_fn(self.job.model, {"step": [], "loss": []}, {})
        options = self.params.options
        z, labels = predict_plane(bundle, self.image, options.channel_axis, at, self.depth, options.device)
        self.frozen_plane = (at,) if self.job.model_frozen else None
        cost = time.monotonic() - now
        if not force and len(np.unique(labels)) < 2:
            # a one-class wash says nothing yet (the first steps): look again soon instead
            self.next_at = time.monotonic() + max(1.0, 9 * cost)
            return None
        # never spend more than ~10% of the run on previews, however large the plane
        self.next_at = time.monotonic() + max(self.params.preview_every, 9 * cost)
        return PreviewUpdate(z, labels, final=force)


def finetune_updates(image: Any, labels: Any, params: FinetuneParams, stop: threading.Event,
                     plane: PlaneTracker | None = None, preview_on: threading.Event | None = None
                     ) -> Iterator[Update]:
    """Worker body of the Fine-tune widget: snapshot the labels, train, preview now and then."""
    yield from _guarded(_finetune(image, labels, params, stop, plane, preview_on), params.options.device)


def _finetune(image: Any, labels: Any, params: FinetuneParams, stop: threading.Event,
              plane: PlaneTracker | None, preview_on: threading.Event | None) -> Iterator[Update]:
    labels = np.array(labels, copy=True)  # painting during the run does not change its targets
    values = [int(v) for v in np.unique(labels) if v > 0]
    names = [params.class_names.get(v, f"class {v}") for v in values] if len(values) >= 2 else None
    job = finetune_job(image, labels, replace(params.options, class_names=names, checkpoint_every=0),
                       init=params.init, unlabeled=params.unlabeled or None)
    previewer = None
    if params.preview and plane is not None:
        if preview_on is None:
            preview_on = threading.Event()
            preview_on.set()
        previewer = _Previewer(job, image, params, plane, preview_on)
    yield from _relay(job, stop, previewer)


#: what the Predict status line says about the labels' class shares (a model trained on full masks)
PRIOR_NOTES = {True: "with the labels' class shares (the labeled image)",
               False: "without the labels' class shares (another image)"}


def predict_updates(bundle: dict, image: Any, options: PredictOptions, stop: threading.Event
                    ) -> Iterator[Update]:
    """Worker body of the Predict widget: the prediction with the options' extras (core.predict)."""
    yield from _guarded(_predict(bundle, image, options, stop), options.device)


def _predict(bundle: dict, image: Any, options: PredictOptions, stop: threading.Event) -> Iterator[Update]:
    last, stage = 0.0, None

    def handle(ev: PredictEvent) -> Iterator[Update]:
        nonlocal last, stage
        if stage is None:
            yield Started(ev.total, _device_name(options.device))
        now = time.monotonic()
        if ev.stage != stage or now - last >= UPDATE_EVERY or ev.done == ev.total:
            yield PredictProgress(ev.done, ev.total, ev.eta)
            last, stage = now, ev.stage

    result = yield from relay(predict_events(bundle, image, options, should_stop=stop.is_set), handle)
    if stop.is_set():
        yield Finished(None, cancelled=True, message="Prediction stopped; no layer was added.")
        return
    notes = (["CRF-refined"] if options.crf else []) + \
        ([f"regions < {options.min_size} px removed"] if options.min_size > 1 else []) + \
        ([PRIOR_NOTES[result.prior_added]] if result.prior_added is not None else [])
    yield Finished(PredictResult(result.labels, result.probabilities, result.uncertainty, result.class_values,
                                 result.class_names, notes))
