"""Augmentations keep image and target aligned, and mark what they invent as not annotated."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_regcon.core.augment import affine
from napari_regcon.core.labels import IGNORE


def _blobs(n: int = 4, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = ndi.gaussian_filter(rng.random((n, 1, size, size)), (0, 0, 4, 4)).astype(np.float32)
    image = (image - image.min()) / (image.max() - image.min())
    target = (image[:, 0] > 0.5).astype(np.int64)
    return image, target


def test_affine_keeps_the_target_on_the_image() -> None:
    image, target = _blobs()
    out_i, out_t = affine(image, target, np.random.default_rng(1), scale=1.3, fill=IGNORE)
    assert out_i.shape == image.shape and out_t.shape == target.shape and out_t.dtype == target.dtype
    known = out_t != IGNORE
    assert 0.3 < known.mean() <= 1.0
    # the warped target is still the threshold of the warped image (up to interpolation at edges)
    agree = (out_t[known] == (out_i[:, 0][known] > 0.5)).mean()
    assert agree > 0.97
    # and the batch really moved: not the input again
    assert np.abs(out_i - image).mean() > 0.05


def test_affine_fills_only_with_ignore_and_keeps_classes() -> None:
    image, target = _blobs(seed=2)
    target[:, :8] = IGNORE
    _, out_t = affine(image, target, np.random.default_rng(3), scale=1.25, fill=IGNORE)
    assert set(np.unique(out_t)) <= {IGNORE, 0, 1}


def test_affine_works_on_3d_patches_in_plane() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((2, 1, 3, 32, 32)).astype(np.float32)
    target = rng.integers(0, 2, (2, 3, 32, 32))
    out_i, out_t = affine(image, target, rng)
    assert out_i.shape == image.shape and out_t.shape == target.shape
