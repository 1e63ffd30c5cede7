"""Tiled prediction: layout, stitching, blending, 2D/3D, outputs written into zarr."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from napari_regcon.core.errors import RegconError
from napari_regcon.core.inference import gaussian_weights, iter_predict, tile_starts
from napari_regcon.core.models import UNetConfig, build_model
from napari_regcon.core.normalize import Normalization
from napari_regcon.core.volume import Volume

NORM = Normalization((0.0,), (1.0,))


def _conv_only(cfg: UNetConfig) -> nn.Module:
    """A U-Net whose GroupNorms are removed: a purely convolutional net (tiles are independent)."""
    torch.manual_seed(0)
    net = build_model(cfg)
    for mod in list(net.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(mod, child_name, nn.Identity())
    return net.eval()


def test_tile_layout_covers_and_is_flush() -> None:
    assert tile_starts(100, 100, 0.25) == [0]
    assert tile_starts(50, 64, 0.25) == [0]
    s = tile_starts(300, 64, 0.25)
    assert s[0] == 0 and s[-1] == 300 - 64 and all(b - a <= 48 for a, b in zip(s, s[1:]))
    w = gaussian_weights((8, 8))
    assert w.max() == 1 and w.min() > 0 and w[3, 3] == w[4, 4]


def test_tiled_equals_whole_image_away_from_tile_borders() -> None:
    """Without overlap each pixel comes from one tile: the stitched output equals the whole-image
    output wherever the receptive field stays inside the tile."""
    cfg = UNetConfig(ndim=2, in_channels=1, out_channels=3, base=4, depth=2)
    net = _conv_only(cfg)
    img = np.random.default_rng(0).random((1, 128, 192)).astype(np.float32)
    probs = np.zeros((3, 1, 128, 192), np.float32)
    list(iter_predict(net, Volume(img), NORM, None, probs, [1, 2, 3], tile=(64, 64), overlap=0.0, precision="fp32"))
    with torch.no_grad():
        whole = net(torch.from_numpy(img)[None]).softmax(1)[0].numpy()
    margin = 20  # > receptive-field radius of this net
    inside = np.zeros((128, 192), bool)
    for y0 in range(0, 128, 64):
        for x0 in range(0, 192, 64):
            inside[y0 + margin:y0 + 64 - margin, x0 + margin:x0 + 64 - margin] = True
    np.testing.assert_allclose(probs[:, 0][:, inside], whole[:, inside], atol=1e-5)


def test_overlapping_tiles_blend_close_to_whole_image() -> None:
    cfg = UNetConfig(ndim=2, in_channels=1, out_channels=2, base=4, depth=2)
    net = _conv_only(cfg)
    img = np.random.default_rng(1).random((1, 160, 160)).astype(np.float32)
    probs = np.zeros((2, 1, 160, 160), np.float32)
    list(iter_predict(net, Volume(img), NORM, None, probs, [1, 2], tile=(64, 64), overlap=0.5, batch_size=3))
    with torch.no_grad():
        whole = net(torch.from_numpy(img)[None]).softmax(1)[0].numpy()
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert np.abs(probs[:, 0, 8:-8, 8:-8] - whole[:, 8:-8, 8:-8]).mean() < 0.01


def test_3d_model_into_zarr_and_labels_values(tmp_path) -> None:
    cfg = UNetConfig(ndim=3, in_channels=2, out_channels=2, base=4, depth=2, pool_z=[True, False])
    net = build_model(cfg).eval()
    img = np.random.default_rng(2).random((2, 10, 70, 50)).astype(np.float32)  # C Z Y X
    vol = Volume(img, channel_axis=0)
    labels = zarr.open(str(tmp_path / "l.zarr"), mode="w", shape=(10, 70, 50), dtype="uint8", chunks=(2, 32, 32))
    probs = zarr.open(str(tmp_path / "p.zarr"), mode="w", shape=(2, 10, 70, 50), dtype="float32", chunks=(1, 2, 32, 32))
    events = list(iter_predict(net, vol, Normalization((0.0, 0.0), (1.0, 1.0)), labels, probs, [3, 9],
                               tile=(4, 32, 32), overlap=0.25))
    assert events[-1].done == events[-1].total
    lab = labels[...]
    p = probs[...]
    assert set(np.unique(lab)) <= {3, 9}
    np.testing.assert_array_equal(lab, np.where(p[1] > p[0], 9, 3))
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)


def test_2d_model_on_stack_and_small_image() -> None:
    cfg = UNetConfig(ndim=2, in_channels=1, out_channels=2, base=4, depth=2)
    net = build_model(cfg).eval()
    img = np.random.default_rng(3).random((3, 20, 30)).astype(np.float32)  # smaller than a tile
    labels = np.zeros((3, 20, 30), np.uint8)
    list(iter_predict(net, Volume(img), NORM, labels, None, [1, 2]))
    assert set(np.unique(labels)) <= {1, 2} and labels.min() >= 1


def test_wrong_channels_and_nan_are_clear_errors() -> None:
    cfg = UNetConfig(ndim=2, in_channels=2, out_channels=2, base=4, depth=2)
    net = build_model(cfg).eval()
    with pytest.raises(RegconError, match="channel"):
        list(iter_predict(net, Volume(np.zeros((16, 16), np.float32)), NORM, None, None, [1, 2]))
    net1 = build_model(UNetConfig(base=4, depth=2)).eval()
    img = np.zeros((16, 16), np.float32)
    img[3, 3] = np.nan
    with pytest.raises(RegconError, match="NaN"):
        list(iter_predict(net1, Volume(img), NORM, np.zeros((16, 16), np.uint8), None, [1, 2]))


def test_low_precision_prediction_agrees_with_fp32(em_small, tiny) -> None:
    """bf16 prediction (the CPU default where bf16 units exist) gives nearly the labels of fp32."""
    from napari_regcon.core.predict import PredictOptions, predict
    from napari_regcon.core.workflows import finetune_job

    raw, truth = em_small
    bundle = finetune_job(raw, truth, dense=True, steps=6, seed=0, **tiny).run()
    full = predict(bundle, raw, PredictOptions(precision="fp32", device="cpu"))
    low = predict(bundle, raw, PredictOptions(precision="bf16", device="cpu"))
    assert np.mean(full.labels != low.labels) < 0.01
