"""Colour images: a trailing axis of 3 or 4 on a PNG/JPEG or an RGB TIFF holds channels (as napari reads it)."""

from __future__ import annotations

from pathlib import Path

COLOUR_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_colour_file(path: str | Path) -> bool:
    """True when ``path`` is a PNG/JPEG or RGB(A) TIFF whose last axis (3 or 4) is colour."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in COLOUR_SUFFIXES:
            import imageio.v3 as iio
            shape = tuple(iio.improps(path).shape)
            return len(shape) == 3 and shape[-1] in (3, 4)
        if suffix in (".tif", ".tiff"):
            import tifffile
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return series.axes.endswith("S") and series.shape[-1] in (3, 4)
    except Exception:
        return False
    return False
