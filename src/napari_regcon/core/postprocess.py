"""Post-processing of predictions: fully connected CRF refinement (GLRP's post-processing), removal of
small regions, uncertainty maps.

:func:`crf_refine` runs mean-field inference of a dense CRF (Krähenbühl & Koltun 2011) on the
class probabilities of a 2D image, slice by slice for stacks: a Gaussian smoothness kernel and a
bilateral appearance kernel (pixels that are near and of similar grey value prefer the same
class), Potts compatibility. It sharpens boundaries along image edges and removes isolated
mis-labelled specks. The backend is the ``pydensecrf2`` C++ extension (the optional ``crf``
extra) when it is installed and works, otherwise an equivalent NumPy/SciPy implementation whose
bilateral kernel is truncated to a dilated window (ConvCRF-style), so ``--crf`` never depends on
a compiled extension. (NumPy rather than torch: these small elementwise passes run faster single-
threaded than with torch's thread pool on a shared 2-core machine.)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.ndimage import gaussian_filter

from .errors import RegconError

BACKENDS = ("auto", "densecrf", "numpy")


def densecrf_available() -> bool:
    """True when the pydensecrf2 extension imports."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except Exception:  # an ImportError, or a broken binary
        return False
    return True


def _grey(image: np.ndarray, intensity_range: tuple[float, float] | None) -> np.ndarray:
    """Map a (C, ...) image to 0..255 grey levels per channel (percentiles 0.5/99.5 unless given)."""
    img = image.astype(np.float32, copy=True)
    for c in range(img.shape[0]):
        if intensity_range is None:
            lo, hi = np.percentile(img[c], (0.5, 99.5))
        else:
            lo, hi = intensity_range
        img[c] = (img[c] - lo) / max(float(hi - lo), 1e-6) * 255.0
    return np.clip(img, 0.0, 255.0)


def _dense_crf_2d(prob: np.ndarray, grey: np.ndarray, p: dict[str, float], iterations: int) -> np.ndarray:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import create_pairwise_bilateral

    k, y, x = prob.shape
    crf = dcrf.DenseCRF2D(x, y, k)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(prob).reshape(k, -1), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=p["spatial_sigma"], compat=p["spatial_weight"])
    feats = create_pairwise_bilateral(sdims=(p["bilateral_sigma"],) * 2, schan=(p["intensity_sigma"],) * grey.shape[0],
                                      img=np.ascontiguousarray(np.moveaxis(grey, 0, -1)), chdim=2)
    crf.addPairwiseEnergy(feats, compat=p["bilateral_weight"])
    return np.asarray(crf.inference(iterations), np.float32).reshape(k, y, x)


def _shift(t: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    """View of a padded (..., Y + 2 pad, X + 2 pad) array shifted by (dy, dx), cropped to (Y, X)."""
    h, w = t.shape[-2] - 2 * pad, t.shape[-1] - 2 * pad
    return t[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def _numpy_crf_2d(prob: np.ndarray, grey: np.ndarray, p: dict[str, float], iterations: int,
                  radius: int = 3) -> np.ndarray:
    """Mean-field dense CRF in NumPy/SciPy (no compiled extension): exact Gaussian smoothness
    kernel; bilateral kernel on a (2 radius + 1)^2 window dilated to reach about 2
    ``bilateral_sigma`` (ConvCRF-style truncation); symmetric normalisation like pydensecrf's
    default; self-pairs excluded."""
    unary = -np.log(prob)
    s = p["spatial_sigma"]
    center = float(gaussian_filter(np.pad(np.ones((1, 1)), 4 * int(math.ceil(s))), s, mode="constant").max())

    def gaussian(t: np.ndarray) -> np.ndarray:
        return gaussian_filter(t, (0, s, s), mode="constant") - center * t

    dil = max(1, int(round(2 * p["bilateral_sigma"] / radius)))
    pad = radius * dil
    offsets = [(dy * dil, dx * dil) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if (dy, dx) != (0, 0)]
    img_p = np.pad(grey, ((0, 0), (pad, pad), (pad, pad)))
    inside = np.pad(np.ones(grey.shape[1:], np.float32), pad)

    def weight(dy: int, dx: int) -> np.ndarray:
        d2 = (dy * dy + dx * dx) / (2 * p["bilateral_sigma"] ** 2)
        c2 = ((grey - _shift(img_p, dy, dx, pad)) ** 2).sum(0) / (2 * p["intensity_sigma"] ** 2)
        return (np.exp(-d2 - c2) * _shift(inside, dy, dx, pad)).astype(np.float32)

    cached = [weight(dy, dx) for dy, dx in offsets] if len(offsets) * grey[0].size <= 2 ** 25 else None

    def bilateral(t: np.ndarray) -> np.ndarray:
        t_p = np.pad(t, ((0, 0), (pad, pad), (pad, pad)))
        out = np.zeros_like(t)
        for n, (dy, dx) in enumerate(offsets):
            out += (cached[n] if cached is not None else weight(dy, dx)) * _shift(t_p, dy, dx, pad)
        return out

    ones = np.ones((1, *grey.shape[1:]), np.float32)
    norm_s = 1.0 / np.sqrt(np.maximum(gaussian(ones), 1e-6))
    norm_b = 1.0 / np.sqrt(np.maximum(bilateral(ones), 1e-6))
    q = prob
    for _ in range(iterations):
        msg = p["spatial_weight"] * norm_s * gaussian(q * norm_s) + p["bilateral_weight"] * norm_b * bilateral(q * norm_b)
        logits = msg - unary
        q = np.exp(logits - logits.max(0, keepdims=True))
        q /= q.sum(0, keepdims=True)
    return q.astype(np.float32)


def crf_refine(probabilities: np.ndarray, image: np.ndarray, *, iterations: int = 5,
               spatial_weight: float = 3.0, spatial_sigma: float = 3.0, bilateral_weight: float = 5.0,
               bilateral_sigma: float = 30.0, intensity_sigma: float = 12.0,
               intensity_range: tuple[float, float] | None = None, backend: str = "auto") -> np.ndarray:
    """Refine class probabilities with a fully connected CRF; returns refined probabilities.

    Parameters
    ----------
    probabilities
        (K, Y, X) or (K, Z, Y, X) class probabilities (softmax); stacks are refined slice by slice.
    image
        The image, of the probabilities' spatial shape, optionally with a leading channel axis.
    spatial_weight, spatial_sigma
        Smoothness kernel: weight and range in pixels.
    bilateral_weight, bilateral_sigma, intensity_sigma
        Appearance kernel: weight, range in pixels and grey-level range (of 0..255).
    intensity_range
        Values mapped to grey levels 0 and 255; default the image's 0.5 and 99.5 percentiles.
    backend
        ``auto`` (pydensecrf2 when it works, else NumPy), ``densecrf`` or ``numpy``.
    """
    if backend not in BACKENDS:
        raise RegconError(f"Unknown CRF backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    prob = np.asarray(probabilities, np.float32)
    if prob.ndim not in (3, 4) or prob.shape[0] < 2:
        raise RegconError(f"CRF refinement needs class probabilities of shape (classes, [Z,] Y, X) with at least 2 classes, got {prob.shape}.")
    spatial = prob.shape[1:]
    img = np.asarray(image)
    if img.shape == spatial:
        img = img[None]
    if img.shape[1:] != spatial:
        raise RegconError(f"The image shape {np.asarray(image).shape} does not match the probabilities {prob.shape}.")
    if not (np.isfinite(prob).all() and np.isfinite(img).all()):
        raise RegconError("CRF refinement got NaN or infinite values in the probabilities or the image.")
    prob = np.clip(prob, 1e-6, None)
    prob /= prob.sum(0, keepdims=True)
    grey = _grey(img, intensity_range)
    params = {"spatial_weight": float(spatial_weight), "spatial_sigma": float(spatial_sigma),
              "bilateral_weight": float(bilateral_weight), "bilateral_sigma": float(bilateral_sigma),
              "intensity_sigma": float(intensity_sigma)}
    use_dense = backend == "densecrf" or (backend == "auto" and densecrf_available())
    if backend == "densecrf" and not densecrf_available():
        raise RegconError("The pydensecrf2 CRF backend is not installed; install napari-regcon[crf] or use backend='numpy'.")
    refine = _dense_crf_2d if use_dense else _numpy_crf_2d
    if prob.ndim == 3:
        return refine(prob, grey, params, int(iterations))
    return np.stack([refine(prob[:, z], grey[:, z], params, int(iterations)) for z in range(prob.shape[1])], 1)


def crf_refine_into(probs: Any, image: Any, normalization: Any, out_labels: Any, class_values: Sequence[int],
                    out_probs: Any | None = None, **crf_params: Any) -> Iterator[tuple[int, int]]:
    """Refine a prediction plane by plane (bounded memory), yielding ``(planes done, planes)`` after each.

    Reads ``probs`` (K, [Z,] Y, X), writes ``class_values[argmax]`` of the refined probabilities into
    ``out_labels`` and, when given, the refined probabilities into ``out_probs`` (which may be
    ``probs`` itself: each plane is read before it is written). ``image`` is a Volume (or array)
    and ``normalization`` the bundle's, so grey levels are those the model saw (0..1 -> 0..255)."""
    from .volume import as_volume

    vol = as_volume(image)
    values = np.asarray(list(class_values))
    planes = vol.shape[1] if vol.is_3d else 1
    for z in range(planes):
        where = (slice(None), z) if vol.is_3d else (slice(None),)
        block = normalization.apply(vol.read(z, slice(None), slice(None)))[:, 0]
        refined = crf_refine(np.asarray(probs[where]), block, intensity_range=(0.0, 1.0), **crf_params)
        out_labels[(z,) if vol.is_3d else ...] = values[refined.argmax(0)].astype(out_labels.dtype)
        if out_probs is not None:
            out_probs[where] = refined
        yield z + 1, planes


# --- clean-up and uncertainty ----------------------------------------------------------------

UNCERTAINTY_KINDS = ("entropy", "margin")


def _small_parts(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Pixels of ``mask`` in connected components smaller than ``min_size`` (skimage old/new API)."""
    from skimage import morphology

    params = inspect.signature(morphology.remove_small_objects).parameters
    if "max_size" in params:  # scikit-image >= 0.26: removes components of size <= max_size
        kept = morphology.remove_small_objects(mask, max_size=min_size - 1)
    else:
        kept = morphology.remove_small_objects(mask, min_size=min_size)
    return mask & ~kept


def _clean(plane: np.ndarray, class_values: Sequence[int], min_size: int) -> np.ndarray:
    """Give the regions of ``plane`` smaller than ``min_size`` the nearest other class (in place)."""
    small = np.zeros(plane.shape, bool)
    for value in class_values:
        small |= _small_parts(plane == value, min_size)
    if small.any() and not small.all():
        _, nearest = ndimage.distance_transform_edt(small, return_indices=True)
        plane[small] = plane[tuple(ix[small] for ix in nearest)]
    return plane


def remove_small_regions_into(labels: Any, class_values: Sequence[int], min_size: int, per_plane: bool = True) -> None:
    """Reassign connected regions smaller than ``min_size`` pixels to the surrounding class, in place.

    Applied to every class alike (removing a small object of one class fills a small hole of
    another), plane by plane for 2D-model predictions of stacks (``per_plane``), so a memory-mapped
    or zarr ``labels`` is read one plane at a time.
    """
    if min_size <= 1:
        return
    if per_plane and labels.ndim == 3:
        for z in range(labels.shape[0]):
            labels[z] = _clean(np.array(labels[z]), class_values, min_size)
    else:
        labels[...] = _clean(np.array(labels[...]), class_values, min_size)


def remove_small_regions(labels: np.ndarray, class_values: Sequence[int], min_size: int,
                         per_plane: bool = True) -> np.ndarray:
    """:func:`remove_small_regions_into` on a copy of ``labels``; returns the copy."""
    out = np.array(labels, copy=True)
    remove_small_regions_into(out, class_values, min_size, per_plane)
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


def uncertainty_into(probs: Any, out: Any, kind: str = "entropy") -> None:
    """:func:`uncertainty_map` of ``probs`` (K, [Z,] Y, X) written into ``out``, one plane at a time."""
    if probs.ndim == 4:
        for z in range(probs.shape[1]):
            out[z] = uncertainty_map(np.asarray(probs[:, z]), kind)
    else:
        out[...] = uncertainty_map(np.asarray(probs), kind)
