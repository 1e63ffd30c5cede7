"""Prediction straight to files: atomic for TIFF/NPY, resumable tile band by band for zarr.

A zarr prediction is written into ``OUT.zarr.partial`` whose attributes record the finished units
(planes for a 2D model, bands of tiles for a 3D model); when every unit is written it is renamed to
``OUT.zarr``. If the run is interrupted (Ctrl-C, a crash, a full disk) the same command picks up
where it stopped. TIFF/NPY outputs are memory-mapped temporary files renamed into place at the end,
after checking that the disk has room for them.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle, as_bundle
from .errors import RegconError
from .inference import PredictEvent
from .io import _suffix, atomic_path, close_output, create_output, create_zarr
from .volume import as_volume

PROGRESS_KEY = "napari_regcon_progress"


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
    return path is not None and _suffix(Path(path)) == ".zarr"


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


def predict_to_files(bundle: dict, image: Any, out: str | Path, probabilities: str | Path | None = None, *,
                     channel_axis: int | None = None, tile: Any = None, overlap: float = 0.25,
                     batch_size: int = 4, device: str = "auto", should_stop: Callable[[], bool] | None = None,
                     ) -> Generator[PredictEvent, None, dict]:
    """Predict ``image`` into ``out`` (labels) and optionally ``probabilities``; yields progress.

    Returns a summary dict: ``resumed_units`` (how many units a previous run had finished) and
    ``complete``. When ``should_stop`` ends the run early, a zarr output stays ``.partial`` (resumable)
    and TIFF/NPY outputs are not written.
    """
    from .workflows import predict_arrays

    out = Path(out)
    probs_path = Path(probabilities) if probabilities else None
    typed = as_bundle(bundle)
    channel_axis = typed.channel_axis(channel_axis)
    spatial = as_volume(image, channel_axis).spatial_shape
    values = typed.classes.values
    dtype = typed.label_dtype
    pshape = (len(values), *spatial)
    resumable = _is_zarr(out) and (probs_path is None or _is_zarr(probs_path))
    if not resumable:
        need = int(np.prod(spatial)) * np.dtype(dtype).itemsize + (int(np.prod(pshape)) * 4 if probs_path else 0)
        if need > _free_bytes(out):
            raise RegconError(f"Not enough free disk space for the prediction ({need / 2**30:.1f} GiB needed next to {out}).")
        with atomic_path(out) as tmp_l:
            labels = create_output(tmp_l, spatial, dtype)
            if probs_path is None:
                yield from predict_arrays(bundle, image, channel_axis=channel_axis, out_labels=labels,
                                          tile=tile, overlap=overlap, batch_size=batch_size, device=device,
                                          should_stop=should_stop)
                _finish_or_stop(labels, should_stop)
            else:
                with atomic_path(probs_path) as tmp_p:
                    probs = create_output(tmp_p, pshape, "float32")
                    yield from predict_arrays(bundle, image, channel_axis=channel_axis, out_labels=labels,
                                              out_probs=probs, probabilities=True, tile=tile, overlap=overlap,
                                              batch_size=batch_size, device=device, should_stop=should_stop)
                    _finish_or_stop(probs, should_stop)
                    del probs
                _finish_or_stop(labels, should_stop)
            del labels
        return {"resumed_units": 0, "complete": True}

    key = {"model": bundle_fingerprint(bundle), "tile": str(tile), "overlap": overlap,
           "image_shape": list(as_volume(image, channel_axis).shape)}
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
        yield from predict_arrays(bundle, image, channel_axis=channel_axis, out_labels=labels, out_probs=probs,
                                  probabilities=probs is not None, tile=tile, overlap=overlap,
                                  batch_size=batch_size, device=device, should_stop=should_stop,
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
