"""THE prediction entry point: a bundle, an image and :class:`PredictOptions` in, a :class:`Prediction` out.

:func:`predict_events` runs the tiled network (:func:`~napari_regcon.core.inference.iter_predict`)
and then what the options ask for, plane by plane in bounded memory: dense-CRF refinement, the
removal of small regions, the uncertainty map (:mod:`~napari_regcon.core.postprocess`). It writes
into arrays the caller gives (numpy, memory-mapped files, zarr) or into new numpy arrays, and
yields :class:`~napari_regcon.core.inference.PredictEvent` progress. Everything that predicts calls
it: the CLI (through :func:`~napari_regcon.core.outputs.predict_to_files`), the Predict widget and
the live preview, the demo, and the Python API (:func:`predict`; :func:`predict_arrays` and
:func:`run_predict` keep the ``(labels, probabilities)`` form of earlier versions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bundle import Bundle, as_bundle
from .drive import drive
from .errors import RegconError
from .inference import PredictEvent, iter_predict
from .options import parse_patch, with_fields
from .postprocess import (
    UNCERTAINTY_KINDS,
    crf_refine_into,
    remove_small_regions_into,
    uncertainty_into,
)
from .volume import Volume, as_volume, fingerprint


@dataclass
class PredictOptions:
    """How to predict: tiling and device, which outputs, which post-processing.

    Attributes
    ----------
    channel_axis
        Axis of the channels in the image (default: the bundle's for a multi-channel model).
    tile, overlap, batch_size
        Tile size (``256`` or ``16,128,128``; default 256² in 2D, 16x128² in 3D), overlap fraction of
        neighbouring tiles, tiles per forward pass.
    probabilities
        Also return the class probabilities (classes first).
    uncertainty
        Also return an uncertainty map in [0, 1]: ``entropy`` or ``margin`` (1 - max probability).
    min_size
        Give connected regions smaller than this many pixels the class around them (per plane for a
        2D model; 0 or 1 = off).
    crf
        Refine with a fully connected CRF, plane by plane (the probabilities returned are the refined ones).
    precision
        ``auto`` (bf16 on CPUs with bf16 units, mixed precision on GPUs), ``fp32``, ``bf16`` or ``fp16``.
    class_prior
        Whether to add the labeled stack's class prior that a bundle may hold (``classes.logit_offset``):
        ``auto`` only on the image the model was trained on (the prior says nothing about another
        stack), ``on`` always, ``off`` never.
    """

    channel_axis: int | None = None
    tile: Any = None
    overlap: float = 0.25
    batch_size: int = 4
    device: str = "auto"
    precision: str = "auto"
    probabilities: bool = False
    uncertainty: str | None = None
    min_size: int = 0
    crf: bool = False
    class_prior: str = "auto"

    def __post_init__(self) -> None:
        if self.class_prior not in CLASS_PRIOR_CHOICES:
            raise RegconError(f"class_prior must be {', '.join(CLASS_PRIOR_CHOICES)}, not {self.class_prior!r}.")
        if self.uncertainty is not None and self.uncertainty not in UNCERTAINTY_KINDS:
            raise RegconError(f"Unknown uncertainty {self.uncertainty!r}; choose {' or '.join(UNCERTAINTY_KINDS)}.")
        if int(self.min_size) < 0:
            raise RegconError(f"The minimum region size must be 0 or more pixels, not {self.min_size}.")
        if not 0 <= float(self.overlap) < 1:
            raise RegconError(f"The tile overlap must be at least 0 and less than 1, not {self.overlap}.")
        if int(self.batch_size) < 1:
            raise RegconError(f"The batch size must be at least 1, not {self.batch_size}.")

    @property
    def needs_probabilities(self) -> bool:
        """True when the class probabilities are computed (asked for, or needed by CRF / uncertainty)."""
        return self.probabilities or self.crf or self.uncertainty is not None

    @property
    def post_processing(self) -> bool:
        """True when anything runs after the network (CRF, small-region removal, uncertainty)."""
        return self.crf or self.min_size > 1 or self.uncertainty is not None


@dataclass
class Prediction:
    """The result of :func:`predict_events`: label image, and the extras the options asked for."""

    labels: Any
    probabilities: Any | None
    uncertainty: Any | None
    class_values: list[int]
    class_names: list[str]
    prior_added: bool | None = None  # the labeled stack's class prior: added, not added, or the bundle has none


def prepare(bundle: Bundle | dict) -> Bundle:
    """The typed bundle, refused unless it can predict (a pretrained bundle has no classes)."""
    typed = as_bundle(bundle)
    if not typed.is_segmentation:
        raise RegconError("This bundle is a pretrained (self-supervised) model without classes; fine-tune it on "
                          "labels before predicting.")
    return typed


CLASS_PRIOR_CHOICES = ("auto", "on", "off")


def class_prior_applies(bundle: Bundle, volume: Volume, choice: str = "auto") -> bool:
    """Whether predicting ``volume`` adds the bundle's class prior (see :class:`PredictOptions`)."""
    classes = bundle.classes
    if classes.logit_offset is None or choice == "off":
        return False
    if choice == "on" or classes.offset_for is None:
        return True
    return fingerprint(volume) == classes.offset_for


def predict_events(bundle: Bundle | dict, image: Any, options: PredictOptions | None = None, *,
                   out_labels: Any | None = None, out_probs: Any | None = None, out_uncertainty: Any | None = None,
                   should_stop: Callable[[], bool] | None = None, zrange: tuple[int, int] | None = None,
                   skip: Collection[int] | None = None, on_unit_done: Callable[[int], None] | None = None,
                   ) -> Generator[PredictEvent, None, Prediction]:
    """Predict ``image`` with a segmentation bundle; yields progress, returns the :class:`Prediction`.

    Outputs go into ``out_labels`` / ``out_probs`` / ``out_uncertainty`` when given (array-likes of
    the image's spatial shape, probabilities with the classes first), else into new numpy arrays.
    ``zrange`` restricts a 2D model to planes ``[z0, z1)``; ``skip`` and ``on_unit_done`` resume a
    prediction (see :func:`~napari_regcon.core.inference.iter_predict`). When ``should_stop`` ends
    the run early the outputs are incomplete and the post-processing has not run.
    """
    opts = options or PredictOptions()
    typed = prepare(bundle)
    vol = as_volume(image, typed.channel_axis(opts.channel_axis))
    with_prior = class_prior_applies(typed, vol, opts.class_prior)
    model = typed.build_model(with_offset=with_prior)
    if vol.shape[0] != model.config.in_channels:
        raise RegconError(f"The model expects {model.config.in_channels} channel(s) but the image has shape "
                          f"{tuple(image.shape)}; check the channel axis.")
    assert typed.normalization is not None  # a segmentation bundle always has one (Bundle.validate)
    values, spatial = typed.classes.values, vol.spatial_shape
    if out_labels is None:
        out_labels = np.zeros(spatial, typed.label_dtype)
    asked_probs = opts.probabilities or out_probs is not None
    if opts.needs_probabilities and out_probs is None:
        out_probs = np.zeros((len(values), *spatial), np.float32)
    tile = parse_patch(opts.tile, model.config.ndim) if opts.tile is not None else None
    yield from iter_predict(model, vol, typed.normalization, out_labels, out_probs, values, tile=tile,
                            overlap=opts.overlap, batch_size=opts.batch_size, device=opts.device,
                            precision=opts.precision, should_stop=should_stop, zrange=zrange, skip=skip, on_unit_done=on_unit_done)
    stopped = should_stop is not None and should_stop()
    if opts.crf and not stopped:
        t0 = time.perf_counter()
        for done, total in crf_refine_into(out_probs, vol, typed.normalization, out_labels, values, out_probs=out_probs):
            yield PredictEvent(done, total, time.perf_counter() - t0, float("nan"), stage="crf")
            if should_stop is not None and should_stop():
                stopped = True
                break
    if opts.min_size > 1 and not stopped:
        remove_small_regions_into(out_labels, values, opts.min_size, per_plane=model.config.ndim == 2)
    if opts.uncertainty is not None and not stopped:
        if out_uncertainty is None:
            out_uncertainty = np.zeros(spatial, np.float32)
        uncertainty_into(out_probs, out_uncertainty, opts.uncertainty)
    return Prediction(out_labels, out_probs if asked_probs else None,
                      out_uncertainty if opts.uncertainty is not None else None, list(values),
                      [typed.classes.name_of(v) for v in values],
                      None if typed.classes.logit_offset is None else with_prior)


def predict(bundle: Bundle | dict, image: Any, options: PredictOptions | None = None, *,
            callback: Callable[[PredictEvent], None] | None = None, **kwargs: Any) -> Prediction:
    """:func:`predict_events` run to the end (``callback`` receives the progress events)."""
    return drive(predict_events(bundle, image, options, **kwargs), callback)


_ARRAY_ARGS = ("out_labels", "out_probs", "should_stop", "zrange", "skip", "on_unit_done")


def predict_arrays(bundle: Bundle | dict, image: Any, **kwargs: Any) -> Generator[PredictEvent, None, tuple[Any, Any]]:
    """:func:`predict_events` with the options as keywords, returning ``(labels, probabilities)``."""
    passed = {k: kwargs.pop(k) for k in _ARRAY_ARGS if k in kwargs}
    result = yield from predict_events(bundle, image, with_fields(PredictOptions, None, **kwargs), **passed)
    return result.labels, result.probabilities


def run_predict(bundle: Bundle | dict, image: Any, callback: Callable[[Any], None] | None = None, **kwargs: Any
                ) -> tuple[Any, Any]:
    """:func:`predict_arrays` run to the end: ``(labels, probabilities)``."""
    return drive(predict_arrays(bundle, image, **kwargs), callback)
