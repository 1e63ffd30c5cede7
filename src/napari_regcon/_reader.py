"""The napari reader of the plugin ("Open with napari-regcon"): TIFF and OME-Zarr stacks with their
voxel size as the layer's scale and their channels in one layer, channel first.

It reads with :mod:`napari_regcon.core.io` (the same readers and voxel-size parser as the command
line) and returns napari layer data; it does not import napari. Channels become the layer's first
axis (a view, nothing is copied): napari lines the plugin's ZYX labels and predictions up with the
last axes, so they show at every position of the channel slider, and the widget finds the channel
axis in the layer's metadata (``napari_regcon.channel_axis``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_regcon.core.io import read_array, read_axes, read_voxel_size

SUFFIXES = (".tif", ".tiff", ".zarr")
#: The key of the layer metadata the reader writes (and the widget reads).
META = "napari_regcon"

LayerData = tuple[Any, dict[str, Any], str]


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """The reader for one .tif/.tiff/.zarr path (napari's ``get_reader`` hook), else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_layers if str(path).lower().rstrip("/\\").endswith(SUFFIXES) else None


def read_layers(path: str | list[str]) -> list[LayerData]:
    """One image layer: channels first, the voxel size (µm) as its scale, axes and source in metadata."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(str(path))
    data = read_array(path)
    axes = read_axes(path)
    if axes is None or len(axes) != len(data.shape):
        axes = None
    rgb = axes is not None and axes.endswith("S")
    channel_axis = None
    if axes is not None and "C" in axes:
        data, axes = _channel_first(data, axes)
        channel_axis = 0
    voxel = read_voxel_size(path)
    kwargs: dict[str, Any] = {"name": path.name.split(".")[0] or path.name}
    scale = _scale(axes, len(data.shape), voxel, rgb)
    if scale is not None:
        kwargs["scale"] = scale
    if axes is not None:
        kwargs["rgb"] = rgb
        kwargs["axis_labels"] = tuple(a.lower() for a in axes if a != "S")
    kwargs["metadata"] = {META: {"source": str(path), "axes": axes, "channel_axis": channel_axis,
                                 "voxel_size": list(voxel) if voxel else None}}
    return [(data, kwargs, "image")]


def _channel_first(data: Any, axes: str) -> tuple[Any, str]:
    """``data`` with its C axis moved to the front, lazily (a view of numpy/memory-mapped arrays,
    a dask view of zarr arrays)."""
    c = axes.index("C")
    if c == 0:
        return data, axes
    if isinstance(data, np.ndarray):
        moved = np.moveaxis(data, c, 0)
    else:
        import dask.array as da
        moved = da.moveaxis(da.from_array(data, chunks=getattr(data, "chunks", "auto")), c, 0)
    return moved, "C" + axes[:c] + axes[c + 1:]


def _scale(axes: str | None, ndim: int, voxel: tuple[float, ...] | None, rgb: bool) -> tuple[float, ...] | None:
    """The layer's scale: the voxel size on the spatial axes (Z, Y, X from the end), 1 elsewhere."""
    if voxel is None:
        return None
    n = ndim - (1 if rgb else 0)
    if axes is not None:
        names = [a for a in axes if a != "S"]
        wanted = "ZYX"[-len(voxel):]
        if [a for a in names if a in "ZYX"] != list(wanted):
            return None  # the file's voxel size does not match its axes: do not guess
        return tuple(float(voxel[wanted.index(a)]) if a in wanted else 1.0 for a in names)
    if n < len(voxel):
        return None
    return (1.0,) * (n - len(voxel)) + tuple(float(v) for v in voxel)
