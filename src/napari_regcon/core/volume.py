"""A lazy (C, Z, Y, X) view of any array-like: numpy, dask, zarr, memory-mapped TIFF.

Every image in the core is seen through :class:`Volume`, so patch sampling and tiled prediction
read only the region they need and never load a whole zarr/dask array into memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import RegconError


@dataclass(frozen=True)
class Volume:
    """An array-like seen as (C, Z, Y, X); a 2D image has Z = 1, a single-channel one C = 1.

    Parameters
    ----------
    data
        Any object with ``shape``, ``dtype`` and numpy-style basic slicing.
    channel_axis
        Axis of ``data`` holding channels, or None.
    """

    data: Any
    channel_axis: int | None = None

    def __post_init__(self) -> None:
        nd = len(self.data.shape)
        if self.channel_axis is not None and not -nd <= self.channel_axis < nd:
            raise RegconError(f"--channel-axis {self.channel_axis} is out of range for an image of shape {tuple(self.data.shape)}.")
        spatial = nd - (self.channel_axis is not None)
        if spatial not in (2, 3):
            raise RegconError(
                f"Expected a 2D (YX) or 3D (ZYX) image{' plus a channel axis' if self.channel_axis is not None else ''}, "
                f"got an array of shape {tuple(self.data.shape)}; pass --channel-axis for multi-channel data."
            )
        if self.channel_axis is not None and not -nd <= self.channel_axis < nd:
            raise RegconError(f"--channel-axis {self.channel_axis} is out of range for shape {tuple(self.data.shape)}.")

    @property
    def _caxis(self) -> int | None:
        return None if self.channel_axis is None else self.channel_axis % len(self.data.shape)

    @property
    def spatial_axes(self) -> list[int]:
        """Axes of ``data`` that are spatial, in order."""
        return [a for a in range(len(self.data.shape)) if a != self._caxis]

    @property
    def is_3d(self) -> bool:
        """True when the data has a Z axis (a stack or a volume)."""
        return len(self.spatial_axes) == 3

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes as stored (YX or ZYX)."""
        return tuple(int(self.data.shape[a]) for a in self.spatial_axes)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(C, Z, Y, X)."""
        c = 1 if self._caxis is None else int(self.data.shape[self._caxis])
        sp = self.spatial_shape
        return (c, *(sp if len(sp) == 3 else (1, *sp)))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    def read(self, z: slice | int, y: slice, x: slice, c: slice | None = None) -> np.ndarray:
        """Read a (C, Z, Y, X) float32 block (Z kept even when ``z`` is an int)."""
        if isinstance(z, int):
            z = slice(z, z + 1)
        c = c if c is not None else slice(None)
        spatial = [z, y, x] if self.is_3d else [y, x]
        index: list[Any] = list(spatial)
        if self._caxis is not None:
            index.insert(self._caxis, c)
        block = np.asarray(self.data[tuple(index)])
        if self._caxis is not None:
            block = np.moveaxis(block, self._caxis, 0)
        else:
            block = block[None]
        if not self.is_3d:
            if z.start not in (0, None) or (z.stop is not None and z.stop > 1):
                raise IndexError("a 2D image has a single z plane")
            block = block[:, None]
        # always a copy: callers normalise blocks in place, and a view would change the user's array
        return block.astype(np.float32, copy=True)


def as_volume(data: Any, channel_axis: int | None = None) -> Volume:
    """Wrap ``data`` (or return it when it already is a Volume)."""
    if isinstance(data, Volume):
        return data
    return Volume(data, channel_axis)


def fingerprint(volume: Volume, crop: int = 64) -> str:
    """A short hash of an image's shape and of the central ``crop``² of its first, middle and last planes
    (as float32, so a change of dtype alone keeps it): tells the image a model was trained on from
    another one without reading the whole of a large stack."""
    c, z, y, x = volume.shape
    digest = hashlib.sha1(repr((c, z, y, x)).encode())
    ys = slice(max(0, y // 2 - crop // 2), min(y, y // 2 + crop // 2))
    xs = slice(max(0, x // 2 - crop // 2), min(x, x // 2 + crop // 2))
    for plane in sorted({0, z // 2, z - 1}):
        digest.update(np.ascontiguousarray(volume.read(plane, ys, xs)).tobytes())
    return digest.hexdigest()[:16]
