"""GLRP: global contrast by relative position in a stack + local contrast of aligned cells; 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from _pretext_utils import (  # noqa: F401  (single_thread is an autouse fixture)
    check_loss_and_gradients,
    cli_pretrain_then_finetune,
    single_thread,
    tiny_setup,
    train_and_evaluate,
)

from napari_regcon.cli import main
from napari_regcon.core.errors import RegconError
from napari_regcon.core.pretext.glrp import GLRPPretext, position_masks
from napari_regcon.core.workflows import pretrain_job


def test_position_masks_hand_computed() -> None:
    # patches: 0,1 neighbours in stack 0 (same window); 2 same stack, 4 planes away, same window;
    # 3 same stack and plane as 0 but a window 20 px away (of 32: overlaps less than half);
    # 4 another stack at the same place
    index = np.array([0, 0, 0, 0, 1])
    z = np.array([5, 6, 9, 5, 5])
    yx = np.array([[0, 0], [0, 0], [0, 0], [20, 0], [0, 0]])
    pos, excluded, weight = position_masks(index, z, dz=2, yx=yx, window=(32, 32))
    expect_pos = np.array([[1, 1, 0, 0, 0],
                           [1, 1, 0, 0, 0],
                           [0, 0, 1, 0, 0],
                           [0, 0, 0, 1, 0],
                           [0, 0, 0, 0, 1]], bool)
    expect_excluded = np.array([[0, 0, 1, 1, 0],   # 4 planes <= 3*2: uncertain; 3 overlaps a bit
                                [0, 0, 1, 1, 0],
                                [1, 1, 0, 0, 0],   # 2 and 3: 4 planes apart, overlapping windows
                                [1, 1, 0, 0, 0],
                                [0, 0, 0, 0, 0]], bool)
    expect_excluded[2, 3] = expect_excluded[3, 2] = True
    assert np.array_equal(pos, expect_pos)
    assert np.array_equal(excluded, expect_excluded)
    assert weight[0, 1] == pytest.approx(0.75) and weight[0, 0] == 1.0 and weight[0, 2] == 0.0
    # without windows (PCL-style relative positions): same stack and |dz| <= delta
    pos, _, _ = position_masks(np.array([0, 0, 1]), np.array([0.1, 0.15, 0.1]), dz=0.1)
    assert np.array_equal(pos, np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], bool))


@pytest.mark.parametrize("ndim,channels", [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_loss_shapes_and_gradients(em_small, ndim: int, channels: int) -> None:
    task = GLRPPretext()
    model, batch = tiny_setup(em_small[0], ndim, channels, task)
    assert batch["gpos"].shape == (8, 8) and batch["lpos"].shape[0] == batch["litem"].shape[0] > 0
    logs = check_loss_and_gradients(model, task, batch)
    assert {"global", "local", "top1", "local_top1"} <= logs.keys()


def test_local_positives_show_the_same_place(em_small) -> None:
    """Pooled cells of the (un-augmented) views agree exactly at positive pairs of two views and
    approximately across neighbouring slices (registered serial sections)."""
    task = GLRPPretext(local_cells=16)
    task.augment_views = False
    model, batch = tiny_setup(em_small[0], 2, 1, task, batch=4)
    x = torch.cat([batch["x1"], batch["x2"]])
    cells = F.avg_pool2d(x, task.cell_px).flatten(2)[batch["litem"], 0, batch["lcell"]]
    pos = batch["lpos"] & ~torch.eye(len(cells), dtype=torch.bool)
    same_patch = pos & ((batch["litem"][:, None] % 4) == (batch["litem"][None, :] % 4))
    assert same_patch.any() and (pos & ~same_patch).any()
    diff = (cells[:, None] - cells[None, :]).abs()
    assert diff[same_patch].max() < 1e-5
    assert diff[pos & ~same_patch].mean() < diff[~batch["lpos"]].mean()
    # every anchor has a positive: cells are sampled where at least two views overlap
    assert pos.any(1).all()


def test_training_loop_asks_for_neighbouring_slices(em_small) -> None:
    raw, _ = em_small
    job = pretrain_job([raw], "glrp", patch_size=32, base=4, depth=2, batch_size=4, steps=1, seed=0,
                       device="cpu", checkpoint_every=0)
    calls = []
    sample = job.sampler.sample

    def spy(batch_size: int, **kwargs):
        calls.append(kwargs)
        return sample(batch_size, **kwargs)

    job.sampler.sample = spy
    job.run()
    assert calls == [{"group": 2, "max_dz": 2}]


def test_training_on_real_em_matches_cells(em_small) -> None:
    before, after = train_and_evaluate(em_small[0], "glrp", steps=40)
    assert after["local_pos_sim"] > after["local_neg_sim"]
    assert after["local_top1"] > max(5 * after["local_top1_chance"], before["local_top1"])


def test_a_2d_image_is_a_clear_error(tmp_path, capsys) -> None:
    with pytest.raises(RegconError, match="stack"):
        GLRPPretext().check_input((1, 1, 64, 64), 2)
    GLRPPretext().check_input((1, 5, 64, 64), 2)
    image = tmp_path / "plane.tif"
    tifffile.imwrite(image, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    out = tmp_path / "x.pt"
    code = main(["pretrain", str(image), "--method", "glrp", "--out", str(out), "--steps", "2", "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("napari-regcon: error: glrp") and "stack" in err[0]
    assert not out.exists()


def test_cli_pretrain_bundle_is_a_valid_init(em_small, tmp_path) -> None:
    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    tifffile.imwrite(tmp_path / "image.tif", raw, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    cli_pretrain_then_finetune("glrp", tmp_path / "image.tif", tmp_path / "labels.tif", tmp_path)
