"""Volumes, normalisation, labels and patch sampling."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_regcon.core.errors import RegconError
from napari_regcon.core.labels import IGNORE, build_labelset
from napari_regcon.core.normalize import Normalization, fit_normalization
from napari_regcon.core.sampling import PatchSampler
from napari_regcon.core.volume import Volume


class CountingArray:
    """An array proxy that counts how many elements were read through slicing."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.read = 0

    def __getitem__(self, index):
        out = self._data[index]
        self.read += np.size(out)
        return out


def test_volume_axes_and_channels() -> None:
    arr = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(3, 2, 4, 5)  # Z C Y X
    v = Volume(arr, channel_axis=1)
    assert v.shape == (2, 3, 4, 5) and v.is_3d
    block = v.read(slice(1, 2), slice(0, 2), slice(1, 3))
    np.testing.assert_array_equal(block, np.moveaxis(arr[1:2, :, 0:2, 1:3], 1, 0))
    assert Volume(np.zeros((7, 8))).shape == (1, 1, 7, 8)
    with pytest.raises(RegconError, match="2D .* or 3D"):
        Volume(np.zeros((2, 3, 4, 5)))


def test_normalization_percentiles_any_dtype() -> None:
    rng = np.random.default_rng(0)
    img = (rng.random((3, 64, 64)) * 60000).astype(np.uint16)
    norm = fit_normalization([Volume(img)])
    out = norm.apply(img[None].astype(np.float32))
    assert -0.1 < np.percentile(out, 1) < 0.1 and 0.9 < np.percentile(out, 99.8) < 1.1
    assert Normalization.from_dict(norm.to_dict()) == norm


@pytest.mark.parametrize("bad, match", [
    (np.full((16, 16), np.nan, np.float32), "NaN"),
    (np.full((16, 16), 7, np.uint8), "constant"),
])
def test_normalization_rejects_bad_images(bad, match) -> None:
    with pytest.raises(RegconError, match=match):
        fit_normalization([Volume(bad)])


def test_labelset_sparse_and_dense() -> None:
    lab = np.zeros((2, 8, 8), np.uint8)
    lab[0, :2] = 3
    lab[1, 5:] = 7
    ls = build_labelset(lab, (2, 8, 8))
    assert ls.class_values == [3, 7]
    enc = ls.read(slice(0, 2), slice(None), slice(None))
    assert set(np.unique(enc)) == {IGNORE, 0, 1}
    assert (enc[lab == 0] == IGNORE).all()
    dense = build_labelset((lab > 0).astype(np.uint8), (2, 8, 8), dense=True)
    assert dense.class_values == [0, 1]
    assert (dense.read(slice(0, 2), slice(None), slice(None)) != IGNORE).all()


@pytest.mark.parametrize("lab, match", [
    (np.zeros((8, 8), np.uint8), "no annotated pixel"),
    (np.ones((8, 8), np.uint8), "single class"),
    (np.zeros((8, 9), np.uint8), "shape"),
    (np.zeros((8, 8), np.float32), "integers"),
])
def test_labelset_errors(lab, match) -> None:
    with pytest.raises(RegconError, match=match):
        build_labelset(lab, (8, 8))


def test_labeled_sampling_always_hits_annotations(em_small) -> None:
    raw, truth = em_small
    lab = np.zeros_like(truth)
    lab[2, 60:64, 10:120] = truth[2, 60:64, 10:120]  # a few strokes on one slice
    ls = build_labelset(lab, raw.shape)
    vol = Volume(raw)
    s = PatchSampler([vol], fit_normalization([vol]), (32, 32), labels=[ls], seed=1)
    batch = s.sample(16)
    assert batch["image"].shape == (16, 1, 32, 32) and batch["target"].shape == (16, 32, 32)
    assert all((t != IGNORE).any() for t in batch["target"])
    seen = set(np.unique(batch["target"])) - {IGNORE}
    assert seen == {0, 1}  # class-balanced: both classes present


@pytest.mark.parametrize("ndim", [2, 3])
def test_plane_sampling_keeps_the_image_class_shares_on_annotated_planes(ndim) -> None:
    """plane_fraction=1: patches lie over annotated planes, anywhere in Y/X, so a rare class comes in
    its own share (as in a prediction tile), where sampling near labels over-represents it."""
    truth = np.ones((12, 192, 192), np.uint8)
    truth[:, 90:94, :] = 2  # a thin, rare class: 2 % of each plane
    labels = np.zeros_like(truth)
    labels[[3, 8]] = truth[[3, 8]]  # two planes labeled densely
    ls = build_labelset(labels, truth.shape)  # 0 = not annotated
    vol = Volume(np.random.default_rng(0).random(truth.shape).astype(np.float32))
    patch = (32, 32) if ndim == 2 else (4, 32, 32)
    share = {}
    for fraction in (0.0, 1.0):
        s = PatchSampler([vol], fit_normalization([vol]), patch, labels=[ls], seed=3, plane_fraction=fraction)
        batches = [s.sample(8) for _ in range(40)]
        origins = np.concatenate([b["origin"] for b in batches])
        depth = 1 if ndim == 2 else patch[0]
        assert all(({3, 8} & set(range(z, z + depth))) for z in origins[:, 0])  # over an annotated plane
        target = np.concatenate([b["target"] for b in batches])
        share[fraction] = float((target == 1).sum() / (target != IGNORE).sum())
    assert share[1.0] < 0.035  # anywhere on the planes: about its own share (2.3 % expected for 32 px patches)
    assert share[0.0] > 2 * share[1.0]  # near labels: a patch around a rare-class pixel half of the time


@pytest.mark.parametrize("kind", ["zarr", "dask", "proxy"])
def test_sampling_reads_only_patches(kind, tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (40, 256, 256), dtype=np.uint8)
    if kind == "zarr":
        arr = zarr.open(str(tmp_path / "a.zarr"), mode="w", shape=data.shape, dtype=data.dtype, chunks=(1, 64, 64))
        arr[...] = data
    elif kind == "dask":
        arr = da.from_array(data, chunks=(1, 64, 64))
    else:
        arr = CountingArray(data)
    vol = Volume(arr)
    norm = Normalization((0.0,), (255.0,))
    s = PatchSampler([vol], norm, (32, 32), seed=0)
    batch = s.sample(8)
    assert batch["image"].shape == (8, 1, 32, 32)
    assert 0 <= batch["zpos"].min() and batch["zpos"].max() <= 1
    if kind == "proxy":
        assert arr.read == 8 * 32 * 32  # exactly the patches, nothing more


def test_3d_patches_and_patch_too_large(em_small) -> None:
    raw, _ = em_small
    vol = Volume(raw)
    s = PatchSampler([vol], fit_normalization([vol]), (4, 32, 32), seed=0)
    assert s.sample(2)["image"].shape == (2, 1, 4, 32, 32)
    with pytest.raises(RegconError, match="larger than the image"):
        PatchSampler([vol], fit_normalization([vol]), (256, 256))


def test_reading_never_changes_the_users_array(em_small) -> None:
    """Normalising a patch must not write through to a float32 source array."""
    raw = em_small[0].astype(np.float32)
    before = raw.copy()
    vol = Volume(raw)
    norm = fit_normalization([vol])
    PatchSampler([vol], norm, (32, 32), seed=0).sample(4)
    norm.apply(vol.read(0, slice(0, 16), slice(0, 16)))
    np.testing.assert_array_equal(raw, before)
