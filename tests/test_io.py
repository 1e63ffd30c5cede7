"""Readers and writers: every supported format, lazy reading, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_regcon.core import io
from napari_regcon.core.errors import RegconError


def test_formats_round_trip(tmp_path) -> None:
    data = np.random.default_rng(0).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    for name in ("a.tif", "a.npy", "a.zarr"):
        io.write_array(tmp_path / name, data)
        np.testing.assert_array_equal(np.asarray(io.read_array(tmp_path / name)[...]), data)
    import imageio.v3 as iio
    iio.imwrite(tmp_path / "a.png", data[0])
    np.testing.assert_array_equal(io.read_array(tmp_path / "a.png"), data[0])


def test_large_compressed_tiff_is_lazy(tmp_path, monkeypatch) -> None:
    data = np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", data, compression="zlib", photometric="minisblack")
    monkeypatch.setattr(io, "EAGER_TIFF_BYTES", 0)
    arr = io.read_array(tmp_path / "c.tif")
    assert not isinstance(arr, np.ndarray)
    np.testing.assert_array_equal(np.asarray(arr[2, 5:9, 7:11]), data[2, 5:9, 7:11])


def test_ome_zarr_group_and_plain_group(tmp_path) -> None:
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    root.create_array("0", shape=(2, 16, 16), dtype="uint8")
    root.create_array("1", shape=(2, 8, 8), dtype="uint8")
    root.attrs["multiscales"] = [{"datasets": [{"path": "0"}, {"path": "1"}]}]
    assert io.read_array(tmp_path / "img.ome.zarr").shape == (2, 16, 16)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("a", shape=(4, 4), dtype="uint8")
    g.create_array("b", shape=(4, 4), dtype="uint8")
    with pytest.raises(RegconError, match="not an array"):
        io.read_array(tmp_path / "g.zarr")


def test_atomic_write_failure_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "out.tif"
    with pytest.raises(ZeroDivisionError), io.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        1 / 0  # noqa: B018
    assert list(tmp_path.iterdir()) == []
