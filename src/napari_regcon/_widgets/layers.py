"""Layers <-> arrays: what the widgets read from napari layers and how results become layers.

Main-thread helpers (no Qt). Output layers (labels to paint, live preview, prediction,
probabilities, uncertainty) take the image layer's scale and translate and have no channel of
their own: one spatial (ZYX or YX) array shown over every channel of the image.

napari lines layers up by their trailing axes, so a ZYX layer lines up with a CZYX image (channel
first) and shows at every position of its channel slider. With the channel axis between spatial
axes (ZCYX, as ImageJ hyperstacks load) a ZYX layer would land on the C, Y, X axes; there the
output is the ZYX array seen through a channel axis of stride 0 (:func:`repeat_channels`, no copy):
every channel position shows, and painting at any channel writes, the same ZYX labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_regcon._reader import META as READER_META

#: Colours of class values 1..8 (0 = not annotated is transparent); the same in every layer.
CLASS_COLORS = {
    1: (0.25, 0.55, 1.0, 1.0),   # blue: usually "background"
    2: (1.0, 0.2, 0.8, 1.0),     # magenta: usually the structure of interest
    3: (1.0, 0.85, 0.1, 1.0),
    4: (0.2, 0.9, 0.35, 1.0),
    5: (1.0, 0.5, 0.1, 1.0),
    6: (0.6, 0.3, 1.0, 1.0),
    7: (0.1, 0.9, 0.9, 1.0),
    8: (0.9, 0.1, 0.1, 1.0),
}


def unwrap(obj: Any) -> Any:
    """The object itself, not napari's PublicOnlyProxy around it (plugin widgets get proxies).

    Each attribute access through the proxy makes a new proxy, so identity checks (``is``)
    between layers only work on the unwrapped objects.
    """
    return getattr(obj, "__wrapped__", obj)


def in_viewer(viewer: Any, layer: Any) -> bool:
    """True while ``layer`` is in the viewer's layer list."""
    return layer is not None and any(unwrap(ly) is unwrap(layer) for ly in viewer.layers)


def move_to_top(viewer: Any, layer: Any, keep_active: bool = True) -> None:
    """Put ``layer`` (in the viewer) on top of the layer list; the active layer stays the user's one
    unless ``keep_active`` is False."""
    layers, active = viewer.layers, viewer.layers.selection.active
    index = layers.index(layer)
    if index != len(layers) - 1:
        layers.move(index, len(layers))
    if keep_active and in_viewer(viewer, active):
        layers.selection.active = active


def layer_array(layer: Any) -> Any:
    """The full-resolution data of a layer (level 0 of a multiscale layer), never copied."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def guess_channel_axis(layer: Any) -> int | None:
    """A channel axis for an image layer: the one the plugin's reader recorded, the colour axis of
    RGB, else the smallest leading axis of 4D."""
    shape = tuple(layer_array(layer).shape)
    if getattr(layer, "rgb", False):
        return len(shape) - 1
    info = (getattr(layer, "metadata", None) or {}).get(READER_META)
    if isinstance(info, dict) and len(str(info.get("axes") or "")) == len(shape):
        return info.get("channel_axis")  # the file said which axis holds channels (or that none does)
    if len(shape) == 4:
        axis = int(np.argmin(shape[:2]))
        return axis if shape[axis] <= 16 else None
    return None


def spatial_shape(shape: Sequence[int], channel_axis: int | None) -> tuple[int, ...]:
    """``shape`` without its channel axis."""
    if channel_axis is None:
        return tuple(int(s) for s in shape)
    ax = channel_axis % len(shape)
    return tuple(int(s) for i, s in enumerate(shape) if i != ax)


def spatial_scale(layer: Any, channel_axis: int | None) -> tuple[float, ...]:
    """The layer's scale on its spatial axes (ZYX or YX): without the channel axis."""
    scale = [float(v) for v in layer.scale]
    if channel_axis is not None and not getattr(layer, "rgb", False):
        del scale[channel_axis % len(scale)]
    return tuple(scale)


def thin_isotropic_stack(layer: Any, channel_axis: int | None) -> str:
    """A one-sentence warning when ``layer`` looks like a stack of few, thin planes (Z at most an
    eighth of Y and X, as two-photon and confocal stacks) but its scale is isotropic (e.g. napari's
    default 1, 1, 1, the voxel size lost on the way); "" otherwise."""
    full = tuple(layer_array(layer).shape)
    shape = full[:-1] if getattr(layer, "rgb", False) else spatial_shape(full, channel_axis)  # no colour axis
    scale = spatial_scale(layer, channel_axis)
    if len(shape) != 3 or len(scale) != 3 or shape[0] * 8 > min(shape[1:]) or not np.allclose(scale, scale[0]):
        return ""
    z, y, x = shape
    return (f"'{layer.name}' looks like a stack of thin planes ({z} planes of {y}x{x} pixels) but its scale is "
            f"isotropic ({', '.join(f'{v:g}' for v in scale)}), so the 3D model takes its planes to be as close as "
            "its pixels; if they are further apart, set the layer's scale to the voxel size, or open the file with "
            "napari-regcon (File > Open with Plugin), which reads it from the file.")


def keeps_channel_dim(layer: Any, channel_axis: int | None) -> bool:
    """True when outputs need a (repeated) channel axis to line up with the image in the viewer."""
    if channel_axis is None or getattr(layer, "rgb", False):
        return False
    return channel_axis % len(layer_array(layer).shape) != 0


def output_geometry(layer: Any, channel_axis: int | None) -> dict[str, Any]:
    """``scale`` and ``translate`` of an output layer for the image ``layer`` (voxel size kept)."""
    scale, translate = list(layer.scale), list(layer.translate)
    if channel_axis is not None and not getattr(layer, "rgb", False) and not keeps_channel_dim(layer, channel_axis):
        ax = channel_axis % len(scale)
        del scale[ax], translate[ax]
    return {"scale": tuple(scale), "translate": tuple(translate)}


def voxel_size_of(layer: Any, channel_axis: int | None) -> list[float] | None:
    """The layer's spatial scale as a voxel size, or None when it is napari's uniform default (it says nothing)."""
    scale = output_geometry(layer, channel_axis)["scale"]
    return [float(v) for v in scale] if len(set(scale)) > 1 else None


def repeat_channels(arr: Any, axis: int, n: int) -> np.ndarray:
    """``arr`` seen with an axis of length ``n`` inserted at ``axis`` that repeats it: a view of
    stride 0 along that axis (no copy), writeable when ``arr`` is, so a write at any position of
    the axis changes ``arr`` itself."""
    base = np.expand_dims(np.asarray(arr), axis)
    shape, strides = list(base.shape), list(base.strides)
    shape[axis], strides[axis] = int(n), 0
    return np.lib.stride_tricks.as_strided(base, shape=tuple(shape), strides=tuple(strides),
                                           writeable=base.flags.writeable)


def repeated_axes(arr: Any) -> tuple[int, ...]:
    """Axes along which ``arr`` repeats itself (stride 0, length > 1), as :func:`repeat_channels` makes."""
    strides = getattr(arr, "strides", None)
    if strides is None:
        return ()
    return tuple(a for a, (st, n) in enumerate(zip(strides, arr.shape)) if st == 0 and n > 1)


def to_layer_data(arr: np.ndarray, layer: Any, channel_axis: int | None, leading: int = 0) -> np.ndarray:
    """A spatial array (``leading`` extra axes before the spatial ones) as data of an output layer
    for the image ``layer``: as it is, or repeated over a ZCYX image's channel axis (no copy)."""
    if keeps_channel_dim(layer, channel_axis):
        shape = layer_array(layer).shape
        return repeat_channels(arr, leading + channel_axis % len(shape), shape[channel_axis % len(shape)])
    return arr


def spatial_labels(labels: Any, image_layer: Any, channel_axis: int | None) -> Any:
    """A labels array seen with the image's spatial shape (a view without the image's channel axis:
    the repeated or size-1 axis of the layers made for a ZCYX image)."""
    shape = tuple(labels.shape)
    if keeps_channel_dim(image_layer, channel_axis) and len(shape) == len(layer_array(image_layer).shape):
        ax = channel_axis % len(shape)
        if shape[ax] == 1 or ax in repeated_axes(labels):
            return labels[tuple(0 if i == ax else slice(None) for i in range(len(shape)))]
    return labels


def z_axis(layer: Any, channel_axis: int | None) -> int | None:
    """The data axis of Z in an image layer (None for 2D images)."""
    ndim = len(layer_array(layer).shape) - (1 if getattr(layer, "rgb", False) else 0)
    axes = [a for a in range(ndim) if channel_axis is None or getattr(layer, "rgb", False)
            or a != channel_axis % len(layer_array(layer).shape)]
    return axes[0] if len(axes) == 3 else None


def current_plane(viewer: Any, layer: Any, channel_axis: int | None) -> int | None:
    """Index of the Z plane of ``layer`` that the viewer shows (None for a 2D image)."""
    axis = z_axis(layer, channel_axis)
    if axis is None:
        return None
    pos = layer.world_to_data(viewer.dims.point)
    n = int(layer_array(layer).shape[axis])
    return int(min(max(round(float(pos[axis])), 0), n - 1))


def class_colormap(values: Sequence[int] = ()) -> dict[Any, Any]:
    """A direct label colormap: 0 transparent, known classes in fixed colours."""
    cmap: dict[Any, Any] = {0: (0.0, 0.0, 0.0, 0.0), None: (0.8, 0.8, 0.8, 1.0)}
    cmap.update(CLASS_COLORS)
    for v in values:
        cmap.setdefault(int(v), (0.8, 0.8, 0.8, 1.0))
    return cmap


def class_features(names: Mapping[int, str]) -> dict[str, list]:
    """Labels-layer features so the status bar names the class under the cursor."""
    values = sorted(int(v) for v in names)
    return {"index": [0, *values], "class": ["not annotated", *[names[v] for v in values]]}


def class_names_of(layer: Any) -> dict[int, str]:
    """Class names stored in a labels layer's features (``class`` column), else {}."""
    feats = getattr(layer, "features", None)
    if feats is None or "class" not in feats or "index" not in feats:
        return {}
    return {int(i): str(n) for i, n in zip(feats["index"], feats["class"]) if int(i) > 0}


def parse_class_names(text: str) -> dict[int, str]:
    """``"background, membrane"`` -> {1: "background", 2: "membrane"}."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    return {i + 1: n for i, n in enumerate(names)}


def labels_kwargs(names: Mapping[int, str], layer: Any, channel_axis: int | None, **extra: Any) -> dict:
    """Keyword arguments of ``viewer.add_labels`` for an output aligned with ``layer``."""
    kw: dict[str, Any] = {"colormap": class_colormap(list(names)), **output_geometry(layer, channel_axis)}
    if names:
        kw["features"] = class_features(names)
    kw.update(extra)
    return kw


def plane_index(layer: Any, viewer: Any) -> tuple[int, ...]:
    """Indices of the non-displayed (leading) axes of ``layer`` at the viewer's position."""
    lead = layer.ndim - 2
    if lead <= 0:
        return ()
    pos = layer.world_to_data(viewer.dims.point)
    return tuple(int(min(max(round(float(pos[a])), 0), layer.data.shape[a] - 1)) for a in range(lead))


def fill_labels(labels_layer: Any, source: np.ndarray, where: np.ndarray, overwrite: bool = False,
                index: tuple[int, ...] = ()) -> int:
    """Copy ``source`` into the labels layer where ``where`` is set (undo-able with Ctrl-Z).

    Without ``overwrite`` only pixels that are 0 (not annotated) in the user's labels change,
    and pixels where ``source`` is 0 never do. ``index`` selects a plane (leading axes) of the
    layer that ``source``/``where`` cover. Returns how many pixels changed.
    """
    current = np.asarray(labels_layer.data[index] if index else labels_layer.data)
    source, where = np.asarray(source), np.asarray(where, bool)
    repeated = () if index else repeated_axes(current)  # a layer made for a ZCYX image: change it once
    if repeated:
        pick = tuple(0 if a in repeated else slice(None) for a in range(current.ndim))
        current, source, where = current[pick], source[pick], where[pick]
    mask = where & (source > 0)
    if not overwrite:
        mask &= current == 0
    mask &= current != source
    coords = list(np.nonzero(mask))
    n = int(coords[0].size) if coords else 0
    if n == 0:
        return 0
    for a in repeated:
        coords.insert(a, np.zeros(n, dtype=np.intp))
    full = tuple(np.full(n, i, dtype=np.intp) for i in index) + tuple(coords)
    labels_layer.data_setitem(full, source[mask].astype(labels_layer.data.dtype))
    if repeated:
        labels_layer.refresh()  # written at channel 0: the channel in view shows it too
    return n
