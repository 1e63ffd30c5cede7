"""USRegCon (regcon): learned regions, grayscale loss, region contrast, balance; 2D and 3D."""

from __future__ import annotations

import itertools

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
from napari_regcon.core.pretext.regcon import RegConPretext, balance_loss, grayscale_loss


@pytest.mark.parametrize("ndim,channels", [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_loss_shapes_and_gradients(em_small, ndim: int, channels: int) -> None:
    task = RegConPretext(n_regions=4)
    model, batch = tiny_setup(em_small[0], ndim, channels, task)
    assert batch["x1"].shape[:2] == (4, channels) and batch["x1"].shape[-2:] == (24, 24)
    assert batch["idx12"].shape == (4, 24, 24)
    logs = check_loss_and_gradients(model, task, batch)
    assert {"semantic", "gray", "balance", "within", "between", "top1"} <= logs.keys()


def _piecewise(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-level piecewise-constant image with noise and the one-hot map of its true regions."""
    regions = np.zeros((64, 64), int)
    regions[:, 20:] = 1
    regions[40:, 30:] = 2
    image = np.array([0.0, 1.0, 2.5])[regions] + rng.normal(0, 0.1, regions.shape)
    onehot = np.eye(3)[regions].transpose(2, 0, 1)
    return torch.tensor(image[None, None], dtype=torch.float32), torch.tensor(onehot[None], dtype=torch.float32)


def test_grayscale_loss_prefers_regions_that_follow_the_intensity_structure() -> None:
    rng = np.random.default_rng(0)
    image, truth = _piecewise(rng)
    shuffled = truth.flatten(2)[..., torch.from_numpy(rng.permutation(64 * 64))].reshape(truth.shape)
    good, parts_good = grayscale_loss(image, truth, delta=0.5)
    bad, parts_bad = grayscale_loss(image, shuffled, delta=0.5)
    assert good < 0.05 < 0.9 < bad
    assert parts_good["between"] == 0.0 and parts_bad["between"] > 0.4  # shuffled regions share one mean
    # scale free: the loss does not change with the image's contrast or offset
    assert grayscale_loss(image * 7 + 3, truth)[0] == pytest.approx(good.item(), abs=1e-4)
    # a region absent from the image is not forced away from the others
    four = torch.cat([truth, torch.zeros_like(truth[:, :1])], 1)
    assert grayscale_loss(image, four)[1]["between"] == 0.0


def test_balance_loss_penalises_collapse() -> None:
    uniform = torch.full((2, 4, 8, 8), 0.25)
    collapsed = torch.zeros(2, 4, 8, 8)
    collapsed[:, 0] = 1.0
    assert balance_loss(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert balance_loss(collapsed).item() == pytest.approx(np.log(4), rel=1e-3)


def test_same_region_of_other_images_is_not_a_negative(em_small) -> None:
    task = RegConPretext(n_regions=3)
    model, batch = tiny_setup(em_small[0], 2, 1, task, batch=2)
    feat = torch.randn(2, 4, 24, 24)
    assign = torch.softmax(torch.randn(2, 3, 24, 24), 1)
    index = batch["idx12"]
    excluded, _ = task.semantic(feat, feat, assign, index)
    task.same_index_negatives = True
    included, _ = task.semantic(feat, feat, assign, index)
    assert included > excluded  # more negatives in the denominator


def test_training_on_real_em_separates_positive_regions(em_small) -> None:
    before, after = train_and_evaluate(em_small[0], "regcon", steps=40)
    assert after["pos_sim"] - after["neg_sim"] > max(0.05, before["pos_sim"] - before["neg_sim"])
    assert after["top1"] > max(10 * after["top1_chance"], before["top1"])
    assert after["balance"] < 0.5  # regions stay in use (no collapse)


def test_grayscale_loss_gradient_recovers_the_intensity_regions() -> None:
    """Descending the grayscale (+ balance) loss on free assignment logits, from near-uniform, finds
    the true piecewise-constant regions: the property that makes the region head follow structure."""
    image, truth = _piecewise(np.random.default_rng(0))
    torch.manual_seed(0)
    logits = torch.nn.Parameter(0.01 * torch.randn(1, 3, 64, 64))
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(150):
        assign = logits.softmax(1)
        loss = grayscale_loss(image, assign)[0] + 0.1 * balance_loss(assign)
        opt.zero_grad()
        loss.backward()
        opt.step()
    hard, true = logits.argmax(1)[0].numpy(), truth.argmax(1)[0].numpy()
    agreement = max((np.array(p)[hard] == true).mean() for p in itertools.permutations(range(3)))
    assert agreement > 0.99 and grayscale_loss(image, logits.softmax(1))[1]["within"] < 0.05


def test_determinism(em_small) -> None:
    losses = []
    for _ in range(2):
        task = RegConPretext()
        model, batch = tiny_setup(em_small[0], 2, 1, task, seed=3)
        losses.append(task.loss(model, batch)[0].item())
    assert losses[0] == losses[1]


def test_too_small_for_k_regions_and_bad_parameters() -> None:
    with pytest.raises(RegconError, match="too small to divide into 64 regions"):
        RegConPretext(n_regions=64).check_input((1, 1, 24, 24), 2)
    RegConPretext(n_regions=8).check_input((1, 1, 24, 24), 2)
    with pytest.raises(RegconError, match="at least 2 regions"):
        RegConPretext(n_regions=1)


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, (np.random.default_rng(0).random((24, 24)) * 255).astype(np.uint8))
    out = tmp_path / "x.pt"
    for argv, match in (([str(small), "--method", "regcon", "--param", "n_regions=64"], "too small to divide into 64 regions"),
                        ([str(small), "--method", "regcon", "--patch-size", "32", "--depth", "5"], "too small for this network")):
        code = main(["pretrain", *argv, "--out", str(out), "--steps", "2", "--quiet"])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert code == 2 and len(err) == 1 and match in err[0], err
        assert not out.exists()


def test_cli_pretrain_bundle_is_a_valid_init(em_small, tmp_path) -> None:
    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    tifffile.imwrite(tmp_path / "image.tif", raw, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    cli_pretrain_then_finetune("regcon", tmp_path / "image.tif", tmp_path / "labels.tif", tmp_path)
