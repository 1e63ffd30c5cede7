"""Two augmented views of each sampled patch with exact, cheap dense correspondence.

Each view is a sub-crop of the patch (integer offset in Y/X), then optional flips of Y and X and
a rot90 in the YX plane (Z is never cropped, flipped or rotated: EM and two-photon stacks are
anisotropic), then independent intensity augmentation. Because every geometric step is an
integer permutation of positions, the view-to-view mapping is exact at any feature stride that
divides the offsets: :func:`correspondence` builds it as an index map and :func:`align` gathers
view-2 features into the frame of view 1 (methods_spec §1.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ..augment import intensity


@dataclass(frozen=True)
class ViewGeometry:
    """Where each view of a batch came from: one entry per sample.

    ``offset`` (B, 2) is the YX corner of the view's crop in the patch, ``flip`` (B, 2) whether Y
    and X were flipped (applied first), ``rot`` (B,) the number of 90° turns in YX (applied after
    the flips), ``size`` the crop's (Y, X) size.
    """

    offset: np.ndarray
    flip: np.ndarray
    rot: np.ndarray
    size: tuple[int, int]


def transform(arr: np.ndarray, flip: np.ndarray, rot: int) -> np.ndarray:
    """Apply a view's flips (Y, X) then rot90 to the last two axes of ``arr``."""
    if flip[0]:
        arr = np.flip(arr, -2)
    if flip[1]:
        arr = np.flip(arr, -1)
    return np.rot90(arr, int(rot), axes=(-2, -1))


def view_size(patch_yx: tuple[int, int], multiple: int, fraction: float = 0.75) -> tuple[int, int]:
    """Crop size of a view: about ``fraction`` of the patch, a multiple of ``multiple``, at least
    ``multiple`` (views of the minimum patch are whole-patch views that differ only by
    flips/rotation and intensity)."""
    out = []
    for p in patch_yx:
        s = int(p * fraction) // multiple * multiple
        out.append(min(p, max(multiple, s)))
    return out[0], out[1]


def random_geometry(batch: int, patch_yx: tuple[int, int], size: tuple[int, int], multiple: int,
                    rng: np.random.Generator) -> ViewGeometry:
    """Draw crop offsets (multiples of ``multiple``), flips and rotations for ``batch`` views."""
    offsets = np.zeros((batch, 2), np.int64)
    for ax in range(2):
        n = (patch_yx[ax] - size[ax]) // multiple + 1
        offsets[:, ax] = rng.integers(0, n, batch) * multiple
    flips = rng.random((batch, 2)) < 0.5
    rots = rng.integers(0, 4, batch) if size[0] == size[1] else 2 * rng.integers(0, 2, batch)
    return ViewGeometry(offsets, flips, rots.astype(np.int64), (int(size[0]), int(size[1])))


def apply_geometry(arr: np.ndarray, geom: ViewGeometry) -> np.ndarray:
    """Cut and transform the views of a batch ``arr`` (B, ..., Y, X); returns a contiguous copy."""
    sy, sx = geom.size
    out = []
    for b in range(arr.shape[0]):
        oy, ox = geom.offset[b]
        crop = arr[b, ..., oy:oy + sy, ox:ox + sx]
        out.append(transform(crop, geom.flip[b], geom.rot[b]))
    return np.ascontiguousarray(np.stack(out))


def parent_coords(geom: ViewGeometry, b: int, stride: int = 1) -> np.ndarray:
    """For every cell of view ``b`` at ``stride`` (view frame, (Yv, Xv)), its (y, x) cell in the
    patch: shape (2, Yv, Xv). Offsets and sizes must be multiples of ``stride``."""
    sy, sx = geom.size[0] // stride, geom.size[1] // stride
    yy, xx = np.meshgrid(np.arange(sy), np.arange(sx), indexing="ij")
    oy, ox = geom.offset[b] // stride
    grid = np.stack([yy + oy, xx + ox])
    return transform(grid, geom.flip[b], geom.rot[b])


def correspondence(g1: ViewGeometry, g2: ViewGeometry, stride: int = 1) -> np.ndarray:
    """Index map (B, Y1, X1): for each YX cell of view 1 (at ``stride``, view-1 frame), the flat
    index of the cell of view 2 that shows the same place, or -1 when it lies outside view 2."""
    if np.any(g1.offset % stride) or np.any(g2.offset % stride) or any(s % stride for s in g1.size + g2.size):
        raise ValueError(f"view offsets and sizes must be multiples of the stride {stride}")
    shape2 = (g2.size[0] // stride, g2.size[1] // stride)
    out = []
    for b in range(len(g1.offset)):
        p1 = parent_coords(g1, b, stride)
        p2 = parent_coords(g2, b, stride)
        lo = g2.offset[b] // stride
        lut = np.full(shape2, -1, np.int64)
        lut[p2[0] - lo[0], p2[1] - lo[1]] = np.arange(p2[0].size).reshape(p2.shape[1:])
        ry, rx = p1[0] - lo[0], p1[1] - lo[1]
        inside = (ry >= 0) & (rx >= 0) & (ry < shape2[0]) & (rx < shape2[1])
        idx = np.full(ry.shape, -1, np.int64)
        idx[inside] = lut[ry[inside], rx[inside]]
        out.append(idx)
    return np.stack(out)


def align(feat2: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map view-2 features (B, C, [Z,] Y2, X2) onto the frame of view 1 with an index map (B, Y1, X1)
    from :func:`correspondence` at the features' stride; returns (features (B, C, [Z,] Y1, X1),
    overlap mask (B, 1, [Z,] Y1, X1) bool). Places outside the overlap are zero."""
    b, c = feat2.shape[:2]
    lead = tuple(feat2.shape[2:-2])
    y1, x1 = index.shape[1:]
    n1 = y1 * x1
    ones = (1,) * len(lead)
    flat = feat2.reshape(b, c, *lead, -1)
    valid = (index >= 0).reshape(b, 1, *ones, n1)
    idx = index.clamp_min(0).reshape(b, 1, *ones, n1).expand(b, c, *lead, n1)
    out = torch.gather(flat, -1, idx) * valid.to(flat.dtype)
    mask = valid.expand(b, 1, *lead, n1)
    return out.reshape(b, c, *lead, y1, x1), mask.reshape(b, 1, *lead, y1, x1)


def blur(image: np.ndarray, rng: np.random.Generator, p: float = 0.2, sigma: tuple[float, float] = (0.5, 1.5)
         ) -> np.ndarray:
    """Gaussian blur in YX (never along Z) of each sample with probability ``p``."""
    out = image.copy()
    for b in range(out.shape[0]):
        if rng.random() < p:
            s = float(rng.uniform(*sigma))
            out[b] = gaussian_filter(out[b], (0,) * (out.ndim - 3) + (s, s))
    return out


@dataclass
class Views:
    """Two views of a batch: images (B, C, [Z,] Y, X), their geometry, and optional label maps
    (e.g. superpixels) cut and transformed with the same geometry."""

    x1: np.ndarray
    x2: np.ndarray
    g1: ViewGeometry
    g2: ViewGeometry
    labels1: np.ndarray | None = None
    labels2: np.ndarray | None = None


def make_views(image: np.ndarray, rng: np.random.Generator, multiple: int, fraction: float = 0.75,
               labels: np.ndarray | None = None, augment: bool = True) -> Views:
    """Two overlapping, independently augmented views of every patch of ``image`` (B, C, *patch).

    ``multiple`` is what crop sizes and offsets must be multiples of: the network's YX divisor
    and the coarsest feature stride at which correspondence is needed. ``labels`` (B, *patch)
    integer maps follow the views exactly (nearest neighbour by construction).
    """
    patch_yx = image.shape[-2:]
    size = view_size(patch_yx, multiple, fraction)
    g1 = random_geometry(image.shape[0], patch_yx, size, multiple, rng)
    g2 = random_geometry(image.shape[0], patch_yx, size, multiple, rng)
    x1, x2 = apply_geometry(image, g1), apply_geometry(image, g2)
    if augment:
        x1 = blur(intensity(x1, rng), rng)
        x2 = blur(intensity(x2, rng), rng)
    l1 = l2 = None
    if labels is not None:
        l1, l2 = apply_geometry(labels, g1), apply_geometry(labels, g2)
    return Views(x1.astype(np.float32, copy=False), x2.astype(np.float32, copy=False), g1, g2, l1, l2)
