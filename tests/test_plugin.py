"""The npe2 manifest validates and the bundled sample loads as napari layers."""

from __future__ import annotations

import numpy as np
from npe2 import PluginManifest

import napari_regcon


def test_manifest_is_valid() -> None:
    pm = PluginManifest.from_distribution("napari-regcon")
    assert pm.name == "napari-regcon"
    assert any(s.key == "isbi2012" for s in pm.contributions.sample_data)
    (reader,) = pm.contributions.readers  # "Open with napari-regcon": TIFF and OME-Zarr with voxel size
    assert set(reader.filename_patterns) == {"*.tif", "*.tiff", "*.zarr"} and reader.accepts_directories
    for cmd in pm.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr.split(".")[0]))


def test_sample_data_layers() -> None:
    from napari_regcon.sample_data import make_sample_data

    layers = make_sample_data()
    (raw, raw_meta, raw_kind), (gt, _, gt_kind) = layers
    assert raw_kind == "image" and gt_kind == "labels"
    assert raw.shape == gt.shape == (10, 384, 384) and raw.dtype == np.uint8
    assert set(np.unique(gt)) == {0, 1} and 0.15 < gt.mean() < 0.35
    assert len(raw_meta["scale"]) == 3
    assert napari_regcon.__version__
