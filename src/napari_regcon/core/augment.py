"""Augmentations for batches of patches: flips, rot90 in the XY plane, rotation and scaling, intensity jitter.

Geometric transforms keep the image and its target aligned; in 3D only XY flips and XY
rotations are used because EM and two-photon stacks are anisotropic.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def geometric(image: np.ndarray, target: np.ndarray | None, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """Random flips of Y and X and a random rot90 in YX, per sample; returns contiguous copies."""
    out_i, out_t = [], []
    for b in range(image.shape[0]):
        img = image[b]
        tgt = None if target is None else target[b]
        for ax in (-1, -2):
            if rng.random() < 0.5:
                img = np.flip(img, ax)
                tgt = None if tgt is None else np.flip(tgt, ax)
        if img.shape[-1] == img.shape[-2]:
            k = int(rng.integers(4))
            img = np.rot90(img, k, axes=(-2, -1))
            tgt = None if tgt is None else np.rot90(tgt, k, axes=(-2, -1))
        out_i.append(img)
        out_t.append(tgt)
    image = np.ascontiguousarray(np.stack(out_i))
    target = None if target is None else np.ascontiguousarray(np.stack(out_t))
    return image, target


def intensity(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Per-sample contrast, brightness, gamma and Gaussian noise on a normalised batch."""
    out = image.copy()
    for b in range(out.shape[0]):
        x = out[b]
        lo, hi = float(x.min()), float(x.max())
        if hi - lo > 1e-6 and rng.random() < 0.5:
            gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.5)) * strength))
            x[...] = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma
        mean = float(x.mean())
        x[...] = (x - mean) * (1 + strength * rng.uniform(-0.3, 0.3)) + mean + strength * rng.uniform(-0.1, 0.1)
        if rng.random() < 0.3:
            x += rng.normal(0, strength * rng.uniform(0, 0.05), x.shape).astype(np.float32)
    return out


def affine(image: np.ndarray, target: np.ndarray | None, rng: np.random.Generator, scale: float = 1.25,
           fill: int = -1) -> tuple[np.ndarray, np.ndarray | None]:
    """Per sample, a random in-plane rotation and a zoom in [1/``scale``, ``scale``] about the patch centre.

    Few strokes show an object at one size and angle; this shows it at others. The image is
    interpolated linearly (mirrored at the border), the target by nearest neighbour, and pixels
    brought in from outside the patch get ``fill`` (ignored by the loss).
    """
    out_i = np.empty_like(image)
    out_t = None if target is None else np.empty_like(target)
    h, w = image.shape[-2:]
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    for b in range(image.shape[0]):
        angle = rng.uniform(0, 2 * np.pi)
        zoom = float(np.exp(rng.uniform(-np.log(scale), np.log(scale))))
        c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
        matrix = np.array([[c, -s], [s, c]])
        offset = centre - matrix @ centre
        planes = image[b].reshape(-1, h, w)
        warped = [ndi.affine_transform(p, matrix, offset, order=1, mode="mirror") for p in planes]
        out_i[b] = np.stack(warped).reshape(image[b].shape)
        if target is not None:
            tp = target[b].reshape(-1, h, w)
            wt = [ndi.affine_transform(t, matrix, offset, order=0, mode="constant", cval=fill) for t in tp]
            out_t[b] = np.stack(wt).reshape(target[b].shape)
    return out_i, out_t
