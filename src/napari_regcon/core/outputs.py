"""Prediction straight to files: atomic for TIFF/NPY, resumable tile band by band for zarr.

The prediction itself is :func:`napari_regcon.core.predict.predict_events`; this module only
creates the output files, checks the disk has room, and renames them into place.

A zarr prediction is written into ``OUT.zarr.partial`` whose attributes record the finished units
(planes for a 2D model, bands of tiles for a 3D model); when every unit is written it is renamed to
``OUT.zarr``. If the run is interrupted (Ctrl-C, a crash, a full disk) the same command picks up
where it stopped. TIFF/NPY outputs are memory-mapped temporary files renamed into place at the end,
after checking that the disk has room for them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle, as_bundle
from .errors import RegconError
from .inference import PredictEvent
from .io import atomic_path, close_output, create_output, create_zarr, file_suffix
from .options import with_fields
from .predict import PredictOptions, predict_events, prepare
from .volume import as_volume

PROGRESS_KEY = "napari_regcon_progress"
SCRATCH = "probs-"
"""Prefix (after ``.OUT.``) of the scratch folder holding probabilities only the post-processing needs."""


def bundle_fingerprint(bundle: Bundle | dict) -> str:
    """A short hash of a bundle's weights and classes: a partial output only resumes with the same model."""
    bundle = as_bundle(bundle)
    h = hashlib.sha1()
    for k in sorted(bundle.state_dict):
        h.update(k.encode())
        h.update(bundle.state_dict[k].float().numpy().tobytes())
    h.update(repr(bundle.classes.values).encode())
    return h.hexdigest()[:16]


def partial_path(out: str | Path) -> Path:
    """Where an unfinished zarr prediction lives until it is complete."""
    return Path(str(out).rstrip("/") + ".partial")


def _is_zarr(path: str | Path | None) -> bool:
    return path is not None and file_suffix(Path(path)) == ".zarr"


def _open_partial(path: Path, shape: tuple[int, ...], dtype: str, key: dict) -> tuple[Any, list[int]]:
    """Open (resume) or create a partial zarr store; returns it and its finished units."""
    import zarr

    if path.exists():
        try:
            arr = zarr.open(str(path), mode="r+")
            info = dict(arr.attrs.get(PROGRESS_KEY, {}))
        except Exception:
            info = {}
        if info.get("key") == key and tuple(arr.shape) == tuple(shape):
            return arr, sorted(int(u) for u in info.get("done", []))
        shutil.rmtree(path)
    arr = create_zarr(path, shape, dtype)
    arr.attrs[PROGRESS_KEY] = {"key": key, "done": [], "complete": False}
    return arr, []


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path.parent if str(path.parent) else Path(".")).free


def predict_to_files(bundle: Bundle | dict, image: Any, out: str | Path, probabilities: str | Path | None = None, *,
                     uncertainty: str | Path | None = None, options: PredictOptions | None = None,
                     should_stop: Callable[[], bool] | None = None, **fields: Any,
                     ) -> Generator[PredictEvent, None, dict]:
    """Predict ``image`` into ``out`` (labels) and optionally ``probabilities`` and ``uncertainty``
    files, with :func:`~napari_regcon.core.predict.predict_events`; yields progress.

    ``options`` (or its fields as keywords: ``tile``, ``crf``, ``min_size``, ...) say how; the
    uncertainty map is the entropy unless ``options.uncertainty`` names another kind. Returns a summary
    dict: ``resumed_units`` (how many units a previous run had finished) and ``complete``. When
    ``should_stop`` ends the run early, a zarr output stays ``.partial`` (resumable) and TIFF/NPY
    outputs are not written. Zarr outputs are resumable only without post-processing (CRF,
    ``min_size``, uncertainty); with it every output is written at the end, like TIFF/NPY.
    """
    out = Path(out)
    probs_path = Path(probabilities) if probabilities else None
    unc_path = Path(uncertainty) if uncertainty else None
    opts = with_fields(PredictOptions, options, **fields)
    opts = replace(opts, probabilities=probs_path is not None,
                   uncertainty=(opts.uncertainty or "entropy") if unc_path is not None else None)
    typed = prepare(bundle)
    vol = as_volume(image, typed.channel_axis(opts.channel_axis))
    spatial, values, dtype = vol.spatial_shape, typed.classes.values, typed.label_dtype
    pshape = (len(values), *spatial)
    resumable = not opts.post_processing and all(_is_zarr(p) for p in (out, probs_path) if p is not None)
    if not resumable:
        need = int(np.prod(spatial)) * (dtype.itemsize + (4 if unc_path else 0)) + \
            (int(np.prod(pshape)) * 4 if opts.needs_probabilities else 0)
        if need > _free_bytes(out):
            raise RegconError(f"Not enough free disk space for the prediction ({need / 2**30:.1f} GiB needed next to {out}).")
        with contextlib.ExitStack() as stack:
            labels = create_output(stack.enter_context(atomic_path(out)), spatial, dtype)
            probs = unc = None
            if probs_path is not None:
                probs = create_output(stack.enter_context(atomic_path(probs_path)), pshape, "float32")
            elif opts.needs_probabilities:  # scratch for the post-processing, next to the output
                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix=f".{out.name}.{SCRATCH}", dir=out.resolve().parent)))
                probs = np.lib.format.open_memmap(scratch / "probs.npy", mode="w+", dtype=np.float32, shape=pshape)
            if unc_path is not None:
                unc = create_output(stack.enter_context(atomic_path(unc_path)), spatial, "float32")
            yield from predict_events(typed, image, opts, out_labels=labels, out_probs=probs, out_uncertainty=unc,
                                      should_stop=should_stop)
            for arr in (unc, probs if probs_path is not None else None, labels):
                if arr is not None:
                    _finish_or_stop(arr, should_stop)
            del labels, probs, unc
        return {"resumed_units": 0, "complete": True}

    key = {"model": bundle_fingerprint(typed), "tile": str(opts.tile), "overlap": opts.overlap,
           "image_shape": list(vol.shape)}
    part_l = partial_path(out)
    labels, done = _open_partial(part_l, spatial, dtype, key)
    probs = None
    if probs_path is not None:
        part_p = partial_path(probs_path)
        probs, done_p = _open_partial(part_p, pshape, "float32", key)
        done = sorted(set(done) & set(done_p))
    finished = list(done)

    def mark(unit: int) -> None:
        finished.append(int(unit))
        for arr in (labels, probs):
            if arr is not None:
                arr.attrs[PROGRESS_KEY] = {"key": key, "done": finished, "complete": False}

    try:
        yield from predict_events(typed, image, opts, out_labels=labels, out_probs=probs, should_stop=should_stop,
                                  skip=done, on_unit_done=mark)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise RegconError(f"The disk filled up while writing {out}; the finished part is kept in {part_l} "
                              "and running the same command again resumes it.") from err
        raise
    if should_stop is not None and should_stop():
        return {"resumed_units": len(done), "complete": False}
    for arr, final, part in ((labels, out, part_l), (probs, probs_path, partial_path(probs_path) if probs_path else None)):
        if arr is None:
            continue
        arr.attrs[PROGRESS_KEY] = {"key": key, "done": finished, "complete": True}
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        part.rename(final)
    return {"resumed_units": len(done), "complete": True}


def _finish_or_stop(arr: Any, should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise PredictionStopped
    close_output(arr)


class PredictionStopped(Exception):
    """Raised inside an atomic write so that a stopped prediction leaves no file behind."""
