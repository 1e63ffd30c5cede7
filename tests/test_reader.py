"""The napari reader contribution: TIFF and OME-Zarr stacks keep their voxel size as the layer's
scale and their channels (first, in one layer); core.io reads the same metadata for the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_regcon._reader import META, napari_get_reader, read_layers
from napari_regcon.core.io import read_axes, read_voxel_size


def _one(path) -> tuple:
    reader = napari_get_reader(str(path))
    assert reader is not None
    (layer,) = reader(str(path))
    data, kwargs, kind = layer
    assert kind == "image"
    return data, kwargs


def test_vesselnn_tiff_keeps_its_voxel_size(vessel_dir):
    # raw_01.tif carries ImageJ metadata {'images': 15, 'slices': 15, 'spacing': 5.0, 'unit': 'um'} and
    # XResolution = 500/497 pixels per µm (0.994 µm pixels), zlib-compressed
    with tifffile.TiffFile(vessel_dir / "raw_01.tif") as tif:
        assert tif.imagej_metadata["spacing"] == 5.0 and tif.imagej_metadata["unit"] == "um"
        assert tif.pages[0].tags["XResolution"].value == (500, 497)
    data, kw = _one(vessel_dir / "raw_01.tif")
    assert data.shape == (15, 512, 512)
    assert kw["scale"] == pytest.approx((5.0, 0.994, 0.994)) and kw["axis_labels"] == ("z", "y", "x")
    assert kw["metadata"][META]["channel_axis"] is None and kw["name"] == "raw_01"
    _, kw = _one(vessel_dir / "raw_02.tif")
    assert kw["scale"] == pytest.approx((5.0, 1.59, 1.59))


def test_two_channel_imagej_and_ome_tiff(tmp_path):
    rng = np.random.default_rng(0)
    zcyx = rng.integers(0, 255, (3, 2, 32, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "hyper.tif", zcyx, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZCYX"})
    assert read_axes(tmp_path / "hyper.tif") == "ZCYX"
    data, kw = _one(tmp_path / "hyper.tif")
    assert data.shape == (2, 3, 32, 40)  # one layer, channel first: napari lines ZYX outputs up with it
    np.testing.assert_array_equal(np.asarray(data), np.moveaxis(zcyx, 1, 0))
    assert kw["scale"] == pytest.approx((1.0, 2.0, 0.5, 0.5)) and kw["axis_labels"] == ("c", "z", "y", "x")
    assert kw["metadata"][META] == {"source": str(tmp_path / "hyper.tif"), "axes": "CZYX", "channel_axis": 0,
                                    "voxel_size": pytest.approx([2.0, 0.5, 0.5])}
    # uncompressed: memory-mapped, and the channel-first layer is a view of the file, not a copy
    assert isinstance(data, np.memmap)

    tifffile.imwrite(tmp_path / "ome.ome.tif", zcyx, compression="zlib",
                     metadata={"axes": "ZCYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.5})
    data, kw = _one(tmp_path / "ome.ome.tif")
    assert data.shape == (2, 3, 32, 40) and kw["scale"] == pytest.approx((1.0, 1.5, 0.3, 0.3))
    # a plain TIFF: no voxel size (napari's default scale), its one leading axis is Z
    tifffile.imwrite(tmp_path / "plain.tif", zcyx[:, 0], photometric="minisblack")
    data, kw = _one(tmp_path / "plain.tif")
    assert "scale" not in kw and kw["metadata"][META]["axes"] == "ZYX"
    # RGB stays RGB
    tifffile.imwrite(tmp_path / "rgb.tif", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    _, kw = _one(tmp_path / "rgb.tif")
    assert kw["rgb"] is True and kw["metadata"][META]["channel_axis"] is None


def _ome_zarr(path, data: np.ndarray, axes: str, scale: list[float], unit: str = "micrometer") -> None:
    root = zarr.open_group(str(path), mode="w")
    root.create_array("0", data=data, chunks=data.shape)
    half = data[..., ::2, ::2]
    root.create_array("1", data=half, chunks=half.shape)
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": a.lower(), "type": "channel"} if a == "C" else
                 {"name": a.lower(), "type": "space", "unit": unit} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]},
                     {"path": "1", "coordinateTransformations": [
                         {"type": "scale", "scale": [*scale[:-2], scale[-2] * 2, scale[-1] * 2]}]}],
    }]


def test_ome_zarr_scale_and_channels(tmp_path):
    rng = np.random.default_rng(1)
    czyx = rng.random((2, 4, 24, 24)).astype(np.float32)
    _ome_zarr(tmp_path / "img.ome.zarr", czyx, "CZYX", [1.0, 2.5, 0.5, 0.5])
    assert read_voxel_size(tmp_path / "img.ome.zarr") == pytest.approx((2.5, 0.5, 0.5))  # the CLI reads it too
    data, kw = _one(tmp_path / "img.ome.zarr")
    assert data.shape == (2, 4, 24, 24) and kw["scale"] == pytest.approx((1.0, 2.5, 0.5, 0.5))
    assert kw["metadata"][META]["channel_axis"] == 0 and kw["name"] == "img"
    # channels after Z in the store: moved first lazily (dask), no read of the whole array
    zcyx = np.moveaxis(czyx, 0, 1)
    _ome_zarr(tmp_path / "zc.zarr", zcyx, "ZCYX", [2.5, 1.0, 400.0, 400.0], unit="nanometer")
    data, kw = _one(tmp_path / "zc.zarr")
    assert not isinstance(data, np.ndarray) and data.shape == (2, 4, 24, 24)
    np.testing.assert_allclose(np.asarray(data[1, 2]), czyx[1, 2])
    assert kw["scale"] == pytest.approx((1.0, 2.5 * 1e-3, 0.4, 0.4))  # nanometres in µm


def test_reader_declines_other_files(tmp_path):
    assert napari_get_reader(str(tmp_path / "a.png")) is None
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None
    assert napari_get_reader([str(tmp_path / "a.tif")]) is read_layers


def test_written_three_plane_stack_reads_back_as_planes(tmp_path):
    """core.io.write_array never stores a 3-plane stack as planar RGB (tifffile's old default), so the
    reader sees three planes, not three channels."""
    from napari_regcon.core.io import write_array
    write_array(tmp_path / "three.tif", np.zeros((3, 16, 16), np.uint8))
    assert read_axes(tmp_path / "three.tif") == "ZYX"
    data, kw = _one(tmp_path / "three.tif")
    assert data.shape == (3, 16, 16) and kw["metadata"][META]["channel_axis"] is None
