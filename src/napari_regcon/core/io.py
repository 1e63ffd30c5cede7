"""Reading images and labels (.tif/.tiff, .zarr, .npy, .png) and writing outputs atomically.

Zarr and large TIFFs are opened lazily; every writer goes to a temporary path next to the
target and is renamed into place, so a failure never leaves a half-written output behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RegconError

EAGER_TIFF_BYTES = 512 * 2**20  # compressed TIFFs larger than this are read lazily, page by page
IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr", ".npy", ".png", ".jpg", ".jpeg")


def file_suffix(path: Path) -> str:
    """The lower-case suffix that says a file's format (``.ome.zarr`` is ``.zarr``, ``.ome.tif`` is ``.tif``)."""
    name = path.name.lower().rstrip("/")
    for s in (".ome.zarr", ".ome.tif", ".ome.tiff"):
        if name.endswith(s):
            return s.replace(".ome", "")
    return path.suffix.lower()


def read_array(path: str | Path, what: str = "image") -> Any:
    """Open an image or label file; zarr stays lazy, TIFF is memory-mapped when possible."""
    path = Path(path)
    if not path.exists():
        raise RegconError(f"The {what} file {path} does not exist.")
    suffix = file_suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise RegconError(f"Cannot read {path}: unsupported format {suffix or '(no extension)'}; use .tif, .zarr, .npy or .png.")
    if path.is_file() and path.stat().st_size == 0:
        raise RegconError(f"The {what} file {path} is empty.")
    try:
        arr = _open(path, suffix)
    except RegconError:
        raise
    except Exception as err:
        raise RegconError(f"Cannot read the {what} file {path}: it is not a valid {suffix[1:].upper()} file ({type(err).__name__}).") from err
    if int(np.prod(arr.shape)) == 0:
        raise RegconError(f"Cannot read the {what} file {path}: it is not a valid {suffix[1:].upper()} file (no image data).")
    return arr


def _open(path: Path, suffix: str) -> Any:
    if suffix in (".tif", ".tiff"):
        import logging

        import tifffile
        logging.getLogger("tifffile").setLevel(logging.ERROR)
        try:
            return tifffile.memmap(path, mode="r")  # uncompressed: memory-mapped, zero copy
        except Exception:
            pass
        if path.stat().st_size < EAGER_TIFF_BYTES:
            return tifffile.imread(path)
        import zarr
        return zarr.open(tifffile.imread(path, aszarr=True), mode="r")  # compressed and large: page by page
    if suffix == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    if suffix in (".png", ".jpg", ".jpeg"):
        import imageio.v3 as iio
        return iio.imread(path)
    return _open_zarr(path)


def _open_zarr(path: Path) -> Any:
    import zarr
    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return node
    # an OME-Zarr group: take the highest-resolution array of the first multiscale
    attrs = dict(node.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if ms:
        return node[ms[0]["datasets"][0]["path"]]
    arrays = [k for k, v in node.members() if hasattr(v, "shape")] if hasattr(node, "members") else []
    if len(arrays) == 1:
        return node[arrays[0]]
    raise RegconError(f"{path} is a zarr group, not an array; point to the array inside it (e.g. {path}/0).")


def check_chunking(arr: Any, name: str | Path = "image", min_plane: int = 32 * 32) -> None:
    """Refuse lazily stored inputs whose chunks are so small that reading tiles would crawl."""
    chunks = getattr(arr, "chunks", None)
    if not chunks:
        return
    yx = [c if isinstance(c, int) else max(c) for c in chunks[-2:]]
    if len(yx) == 2 and yx[0] * yx[1] < min_plane:
        raise RegconError(f"{name} is stored in tiny chunks ({'x'.join(map(str, yx))} pixels in YX); rechunk it "
                          "(e.g. to 1x512x512) before predicting.")


def check_output_path(path: str | Path) -> Path:
    """Validate an output path's format and writability before any long work starts."""
    from .checkpoint import check_writable
    path = Path(path)
    suffix = file_suffix(path)
    if suffix not in (".tif", ".tiff", ".zarr", ".npy"):
        raise RegconError(f"Cannot write {path}: use an output ending in .tif, .zarr or .npy.")
    check_writable(path)
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
    tmp = tmpdir / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def write_array(path: str | Path, data: np.ndarray, axes: str | None = None) -> Path:
    """Write a numpy array to .tif/.npy/.zarr atomically."""
    path = Path(path)
    suffix = file_suffix(path)
    with atomic_path(path) as tmp:
        if suffix in (".tif", ".tiff"):
            import tifffile
            meta = {"axes": axes} if axes else None
            tifffile.imwrite(tmp, data, compression="zlib", metadata=meta, photometric="minisblack",
                             bigtiff=data.nbytes > 2**31)  # never RGB: a 3-plane stack stays 3 planes
        elif suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, data)
        elif suffix == ".zarr":
            z = create_zarr(tmp, data.shape, data.dtype)
            z[...] = data
        else:
            raise RegconError(f"Cannot write {path}: use an output ending in .tif, .zarr or .npy.")
    return path


def create_zarr(path: str | Path, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...] | None = None) -> Any:
    """Create a chunked, compressed zarr array for writing tile by tile."""
    import zarr
    if chunks is None:
        chunks = tuple(min(s, c) for s, c in zip(shape, (1,) * (len(shape) - 2) + (512, 512)))
    return zarr.open(str(path), mode="w", shape=shape, dtype=dtype, chunks=chunks)


def create_output(path: str | Path, shape: tuple[int, ...], dtype: Any) -> Any:
    """Create an on-disk array to fill tile by tile (zarr store, memory-mapped NPY or TIFF)."""
    path = Path(path)
    suffix = file_suffix(path)
    if suffix == ".zarr":
        return create_zarr(path, shape, dtype)
    if suffix == ".npy":
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
    if suffix in (".tif", ".tiff"):
        import tifffile
        return tifffile.memmap(path, shape=tuple(shape), dtype=dtype, photometric="minisblack", bigtiff=int(np.prod(shape)) * np.dtype(dtype).itemsize > 2**31)
    raise RegconError(f"Cannot write {path}: use an output ending in .tif, .zarr or .npy.")


def close_output(arr: Any) -> None:
    """Flush an array made by :func:`create_output` to disk."""
    flush = getattr(arr, "flush", None)
    if callable(flush):
        flush()


_UNIT_TO_UM = {"um": 1.0, "µm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
               "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "m": 1e6, "cm": 1e4,
               "inch": 25400.0, "pixel": 1.0, "": 1.0}


def read_voxel_size(path: str | Path) -> tuple[float, ...] | None:
    """Physical pixel size of a TIFF or OME-Zarr as (Z, Y, X) (or (Y, X) without Z spacing), in µm
    when the unit is known.

    Reads the ImageJ tags (XResolution/YResolution in pixels per unit, ``spacing`` and ``unit``
    in the ImageJ description) or OME-XML PhysicalSize{X,Y,Z} of a TIFF, or the ``scale``
    coordinate transformations of an OME-NGFF multiscale (its first, full-resolution level);
    returns None for other formats or when the file does not say. Used to pick physically
    sensible anisotropic 3D defaults and, by the napari reader, as the layer's scale.
    """
    path = Path(path)
    if file_suffix(path) == ".zarr":
        return _ngff_voxel_size(path)
    if file_suffix(path) not in (".tif", ".tiff") or not path.is_file():
        return None
    import tifffile
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                size = _ome_voxel_size(tifffile.xml2dict(tif.ome_metadata))
                if size:
                    return size
            page = tif.pages[0]
            ij = tif.imagej_metadata or {}
            tags = page.tags
            xres, yres = tags.get("XResolution"), tags.get("YResolution")
            if xres is None or yres is None:
                return None
            unit = str(ij.get("unit", "")).strip().lower()
            res_unit = int(getattr(tags.get("ResolutionUnit"), "value", 1) or 1)
            if not ij and res_unit in (2, 3):  # plain TIFF: resolution per inch / per centimetre
                unit = "inch" if res_unit == 2 else "cm"
            scale = _UNIT_TO_UM.get(unit, 1.0)

            def pixel(tag: Any) -> float | None:
                num, den = tag.value
                return den / num * scale if num and den else None

            y, x = pixel(yres), pixel(xres)
            if y is None or x is None or (y == x == scale and not ij):
                return None  # the default 1 pixel per unit says nothing
            spacing = ij.get("spacing")
            if spacing and float(spacing) > 0 and int(ij.get("slices", ij.get("images", 1)) or 1) > 1:
                return (float(spacing) * scale, y, x)
            return (y, x)
    except Exception:
        return None


def _ome_voxel_size(meta: dict) -> tuple[float, ...] | None:
    """(Z, Y, X) or (Y, X) in µm from an OME-XML dict, None when absent."""
    image = meta.get("OME", {}).get("Image", {})
    pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
    out = []
    for axis in ("Z", "Y", "X"):
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            if axis == "Z":
                continue
            return None
        out.append(float(value) * _UNIT_TO_UM.get(str(pixels.get(f"PhysicalSize{axis}Unit", "µm")).lower(), 1.0))
    return tuple(out)


def _ngff_multiscale(path: Path) -> dict | None:
    """The first OME-NGFF multiscale of a zarr group (v0.4 ``multiscales`` or v0.5 ``ome``), or None."""
    try:
        import zarr
        node = zarr.open(str(path), mode="r")
        attrs = dict(node.attrs)
    except Exception:
        return None
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    return ms[0] if ms and isinstance(ms[0], dict) else None


def _ngff_axes(ms: dict) -> list[tuple[str, str, str]]:
    """(name, type, unit) of each axis of a multiscale (v0.3 lists names only)."""
    out = []
    for ax in ms.get("axes", []):
        if isinstance(ax, str):
            out.append((ax.lower(), "space" if ax.lower() in "zyx" else "", ""))
        else:
            name = str(ax.get("name", "")).lower()
            out.append((name, str(ax.get("type", "space" if name in ("z", "y", "x") else "")).lower(),
                        str(ax.get("unit", "")).lower()))
    return out


def _ngff_voxel_size(path: Path) -> tuple[float, ...] | None:
    ms = _ngff_multiscale(path)
    if ms is None or not ms.get("datasets"):
        return None
    scale = None
    for transforms in (ms["datasets"][0].get("coordinateTransformations", []), ms.get("coordinateTransformations", [])):
        for t in transforms or []:
            if t.get("type") == "scale" and t.get("scale"):
                s = np.asarray(t["scale"], float)
                scale = s if scale is None or len(scale) != len(s) else scale * s
    axes = _ngff_axes(ms)
    if scale is None or len(axes) != len(scale):
        return None
    space = [(float(v) * _UNIT_TO_UM.get(unit, 1.0)) for (name, kind, unit), v in zip(axes, scale) if kind == "space"]
    return tuple(space) if len(space) in (2, 3) and all(v > 0 for v in space) else None


def read_axes(path: str | Path) -> str | None:
    """The axes of the array :func:`read_array` opens, as letters (``ZYX``, ``ZCYX``, ``CYX``, ``YXS``
    for RGB...), from the TIFF's ImageJ/OME metadata or the OME-Zarr ``axes``; None when unknown.

    TIFFs without axis metadata have one unnamed leading axis (tifffile's ``Q``/``I``), read as Z.
    """
    path = Path(path)
    suffix = file_suffix(path)
    if suffix == ".zarr":
        ms = _ngff_multiscale(path)
        if ms is None:
            return None
        letters = "".join({"channel": "C", "time": "T"}.get(kind, name[:1].upper()) for name, kind, _ in _ngff_axes(ms))
        return letters or None
    if suffix not in (".tif", ".tiff") or not path.is_file():
        return None
    import tifffile
    try:
        with tifffile.TiffFile(path) as tif:
            axes = tif.series[0].axes.upper()
            shape = tif.series[0].shape
    except Exception:
        return None
    unknown = [a for a in axes if a in "QI"]
    if len(unknown) == 1 and "Z" not in axes:
        axes = axes.replace(unknown[0], "Z")
    if "S" in axes and not (axes.endswith("S") and shape[-1] in (3, 4)):
        axes = axes.replace("S", "C")  # samples that are not colour are channels
    return axes
