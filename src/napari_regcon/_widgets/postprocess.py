"""Prediction post-processing the Predict widget offers: small-region cleanup, uncertainty, CRF.

Qt-free helpers run inside the prediction worker. The CRF comes from
``napari_regcon.core.postprocess.crf_refine`` when that module is installed; otherwise the
widget disables its checkbox.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import morphology

from napari_regcon.core.normalize import Normalization
from napari_regcon.core.volume import as_volume


def _small_parts(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Pixels of ``mask`` in connected components smaller than ``min_size`` (skimage old/new API)."""
    params = inspect.signature(morphology.remove_small_objects).parameters
    if "max_size" in params:  # scikit-image >= 0.26: removes components of size <= max_size
        kept = morphology.remove_small_objects(mask, max_size=min_size - 1)
    else:
        kept = morphology.remove_small_objects(mask, min_size=min_size)
    return mask & ~kept


def remove_small_regions(labels: np.ndarray, class_values: Sequence[int], min_size: int,
                         per_plane: bool = True) -> np.ndarray:
    """Reassign connected regions smaller than ``min_size`` pixels to the surrounding class.

    Applied to every class alike (removing a small object of one class fills a small hole of
    another), slice by slice for 2D-model predictions of stacks (``per_plane``). Returns a copy.
    """
    out = np.array(labels, copy=True)
    if min_size <= 1:
        return out
    planes = list(out) if per_plane and out.ndim == 3 else [out]
    for plane in planes:  # views into ``out``
        small = np.zeros(plane.shape, bool)
        for value in class_values:
            small |= _small_parts(plane == value, min_size)
        if small.any() and not small.all():
            _, nearest = ndimage.distance_transform_edt(small, return_indices=True)
            plane[small] = plane[tuple(ix[small] for ix in nearest)]
    return out


def uncertainty_map(probs: np.ndarray, kind: str = "entropy") -> np.ndarray:
    """Per-pixel uncertainty in [0, 1] from class probabilities (classes first).

    ``entropy``: Shannon entropy divided by log(K); ``margin``: 1 - max probability, scaled so
    that a uniform prediction gives 1.
    """
    k = probs.shape[0]
    if k < 2:
        return np.zeros(probs.shape[1:], np.float32)
    if kind == "entropy":
        p = np.clip(probs, 1e-7, 1.0)
        return (-(p * np.log(p)).sum(0) / np.log(k)).astype(np.float32)
    if kind == "margin":
        return ((1.0 - probs.max(0)) * k / (k - 1)).astype(np.float32)
    raise ValueError(f"unknown uncertainty kind {kind!r}")


def find_crf() -> Callable[..., Any] | None:
    """``core.postprocess.crf_refine`` when available (it needs an optional C extension)."""
    try:
        from napari_regcon.core.postprocess import crf_refine
    except Exception:  # missing module, missing pydensecrf2, or a broken build: no CRF offered
        return None
    return crf_refine


def crf_planes(crf: Callable[..., Any], probs: np.ndarray, image: Any, channel_axis: int | None,
               normalization: Normalization, labels: np.ndarray, class_values: Sequence[int]) -> Iterator[int]:
    """Refine ``labels`` with ``crf`` plane by plane (in place); yields after each plane.

    Each plane of the image is normalised as the model saw it (the bundle's normalisation), so
    the CRF's grey levels are 0..1 -> 0..255 whatever the dtype.
    """
    vol = as_volume(image, channel_axis)
    norm = normalization
    values = np.asarray(list(class_values))
    planes = vol.shape[1] if vol.is_3d else 1
    for z in range(planes):
        block = norm.apply(vol.read(z, slice(None), slice(None)))[:, 0]
        prob = probs[:, z] if vol.is_3d else probs
        refined = np.asarray(crf(prob, block, intensity_range=(0.0, 1.0)))
        if vol.is_3d:
            labels[z] = values[refined.argmax(0)]
        else:
            labels[...] = values[refined.argmax(0)]
        yield z
