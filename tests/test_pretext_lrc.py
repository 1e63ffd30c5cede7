"""LRC (localized region contrast): superpixels, contrastive sampling, optional global term; 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from _pretext_utils import (  # noqa: F401  (single_thread is an autouse fixture)
    check_loss_and_gradients,
    cli_pretrain_then_finetune,
    single_thread,
    tiny_setup,
    train_and_evaluate,
)

from napari_regcon.cli import main
from napari_regcon.core.errors import RegconError
from napari_regcon.core.pretext.lrc import LRCPretext, sample_region_pixels, superpixels


@pytest.mark.parametrize("ndim,channels", [(2, 1), (2, 2), (3, 1), (3, 2)])
@pytest.mark.parametrize("mode", ["pixels", "regions"])
def test_loss_shapes_and_gradients(em_small, ndim: int, channels: int, mode: str) -> None:
    task = LRCPretext(mode=mode, min_size=10, voxels_per_segment=6 ** 3)
    model, batch = tiny_setup(em_small[0], ndim, channels, task)
    assert batch["valid"].shape == (4, 8) and batch["valid"].any()
    if mode == "pixels":
        assert batch["pix1"].shape == (4, 8, 16)
    logs = check_loss_and_gradients(model, task, batch)
    assert {"local", "global", "top1"} <= logs.keys()


def test_local_only_without_global_term(em_small) -> None:
    task = LRCPretext(global_weight=0.0, min_size=10)
    model, batch = tiny_setup(em_small[0], 2, 1, task)
    assert task.global_proj is None
    logs = check_loss_and_gradients(model, task, batch)
    assert "global" not in logs


def _two_sided(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image whose left part (an irregular boundary) is much brighter than the rest."""
    yy = np.arange(shape[-2])[:, None]
    xx = np.arange(shape[-1])[None, :]
    side = (xx < shape[-1] // 2 + 6 * np.sin(yy / 5.0)).astype(int)
    side = np.broadcast_to(side, shape)
    image = np.where(side, 0.8, 0.2) + rng.normal(0, 0.04, shape)
    return image[None].astype(np.float32), side


def _leak(seg: np.ndarray, side: np.ndarray) -> float:
    """Fraction of pixels in a superpixel whose majority lies on the other side of the edge."""
    return sum(min(v.sum(), v.size - v.sum()) for v in (side[seg == s] for s in np.unique(seg))) / side.size


@pytest.mark.parametrize("shape", [(64, 64), (8, 48, 48)])
def test_superpixels_respect_strong_edges(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    image, side = _two_sided(shape, rng)
    seg = superpixels(image, voxels_per_segment=6 ** 3)
    assert seg.shape == shape and seg.min() == 0 and len(np.unique(seg)) >= 2
    # only pixels right at the edge may leak (pre-smoothing); a regular grid of blocks cuts across it
    assert _leak(seg, side) < 0.01
    blocks = np.add.outer(np.arange(shape[-2]) // 8 * 100, np.arange(shape[-1]) // 8)
    assert _leak(np.broadcast_to(blocks, shape), side) > 5 * _leak(seg, side)


def test_sampled_pixels_belong_to_their_superpixel_in_both_views() -> None:
    rng = np.random.default_rng(1)
    labels1 = rng.integers(0, 5, (3, 16, 16))
    labels2 = rng.integers(0, 5, (3, 16, 16))
    labels2[2] = 9  # image 2 shares no superpixel between its views: all slots invalid
    ids, pix1, pix2, valid = sample_region_pixels(labels1, labels2, regions=8, pixels=6, min_pixels=4, rng=rng)
    assert valid[:2].sum(1).tolist() == [5, 5] and not valid[2].any()
    for b in range(2):
        for r in np.flatnonzero(valid[b]):
            assert (labels1[b].ravel()[pix1[b, r]] == ids[b, r]).all()
            assert (labels2[b].ravel()[pix2[b, r]] == ids[b, r]).all()
    assert len(set(ids[0, valid[0]])) == 5  # distinct regions


def test_training_on_real_em_makes_same_superpixel_pixels_match(em_small) -> None:
    before, after = train_and_evaluate(em_small[0], "lrc", steps=40, min_size=20)
    assert after["pos_sim"] > after["neg_sim"]
    assert after["top1"] > max(2.5 * after["top1_chance"], before["top1"])
    assert after["local"] < before["local"]


def test_bad_parameters() -> None:
    with pytest.raises(RegconError, match="mode"):
        LRCPretext(mode="superpixel")
    with pytest.raises(RegconError, match="global_weight"):
        LRCPretext(global_weight=-1)


def test_cli_pretrain_bundle_is_a_valid_init(em_small, tmp_path, capsys) -> None:
    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    tifffile.imwrite(tmp_path / "image.tif", raw, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    cli_pretrain_then_finetune("lrc", tmp_path / "image.tif", tmp_path / "labels.tif", tmp_path)
    capsys.readouterr()
    code = main(["pretrain", str(tmp_path / "image.tif"), "--method", "lrc", "--param", "mode=pixel",
                 "--out", str(tmp_path / "x.pt"), "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and "mode" in err[0]
    assert torch.get_num_threads() == 1
