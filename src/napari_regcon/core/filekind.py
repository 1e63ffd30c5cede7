"""Name what a file is when it is not what a command expected (an image given as a model, say)."""

from __future__ import annotations

from pathlib import Path

_MAGIC = ((b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"II+\x00", "a TIFF image"),
          (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x93NUMPY", "a NumPy array (.npy)"))


def image_kind(path: str | Path) -> str | None:
    """'a TIFF image', 'a zarr store', ... when ``path`` holds an image or array; None otherwise."""
    path = Path(path)
    if path.is_dir():
        if (path / ".zarray").exists() or (path / "zarr.json").exists() or (path / ".zgroup").exists():
            return "a zarr store"
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    return None
