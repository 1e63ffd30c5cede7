"""Masked image modelling for two-photon stacks: masking strategies, loss, 3D/multi-channel flow, CLI.

Real data: crops of the VesselNN two-photon stacks (``shared/data/vesselnn_2pm``, BM4D-denoised
mouse brain vasculature, 5 µm z step). The multi-channel test volume is a raw VesselNN crop
stacked with a Gaussian-filtered (sigma 2 px in Y and X) version of itself as a second channel,
because the dataset itself has one channel. Tests that need the data skip when it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import VESSEL_DIR
from scipy import ndimage

from napari_regcon.cli import main
from napari_regcon.core.checkpoint import load_bundle
from napari_regcon.core.errors import RegconError
from napari_regcon.core.io import read_voxel_size
from napari_regcon.core.normalize import fit_normalization
from napari_regcon.core.pretext.mim import (
    MIMPretext,
    anisotropic_cell,
    cell_means,
    masked_mse,
    parse_mask_modes,
)
from napari_regcon.core.volume import as_volume
from napari_regcon.core.workflows import finetune_job, pretrain_job, run_predict

needs_vessels = pytest.mark.skipif(not (VESSEL_DIR / "raw_01.tif").exists(), reason="VesselNN data not available")


@pytest.fixture(scope="module")
def vessel() -> tuple[np.ndarray, np.ndarray]:
    """A real 8x96x96 two-photon crop of raw_01 (uint8) and its vessel labels (1 = vessel)."""
    import tifffile
    if not (VESSEL_DIR / "raw_01.tif").exists():
        pytest.skip("VesselNN data not available")
    raw = tifffile.imread(VESSEL_DIR / "raw_01.tif")[4:12, 200:296, 200:296].copy()
    lab = tifffile.imread(VESSEL_DIR / "labels_01.tif")[4:12, 200:296, 200:296].copy()
    return raw, lab


def two_channel(raw: np.ndarray) -> np.ndarray:
    """Raw crop stacked with its Gaussian-filtered (sigma 2 px in YX) version: (Z, Y, X, 2) float32."""
    smooth = ndimage.gaussian_filter(raw.astype(np.float32), sigma=(0, 2, 2))
    return np.stack([raw.astype(np.float32), smooth], axis=-1)


def normalised(raw: np.ndarray) -> np.ndarray:
    vol = as_volume(raw)
    return fit_normalization([vol]).apply(vol.read(slice(None), slice(None), slice(None)))


class Identity(torch.nn.Module):
    """Stands in for a network that returns exactly ``out``."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out


# ---- masks -----------------------------------------------------------------------------


@needs_vessels
def test_intensity_masking_hides_bright_cells_more_often(vessel):
    """Measured over many draws on a real crop: masking frequency rises with cell brightness."""
    image = normalised(vessel[0])
    cell = (2, 16, 16)
    means = cell_means(image, cell)[0].ravel()
    rng = np.random.default_rng(0)
    freq = {}
    for mode in ("random", "intensity"):
        task = MIMPretext(ratio=0.4, patch=cell, mask=mode)
        hits = np.zeros_like(means)
        for _ in range(300):
            m = task.make_mask(image, rng)
            hits += cell_means(m[:1].astype(np.float32), cell)[0].ravel() > 0.5
        freq[mode] = hits / 300
    bright = means >= np.quantile(means, 0.75)
    dark = means <= np.quantile(means, 0.25)
    corr = {k: np.corrcoef(means, f)[0, 1] for k, f in freq.items()}
    assert corr["intensity"] > 0.7, corr
    assert abs(corr["random"]) < 0.3, corr
    assert freq["intensity"][bright].mean() > freq["intensity"][dark].mean() + 0.3
    # both hide the same number of cells: intensity masking moves the mask, it does not grow it
    assert freq["intensity"].sum() == pytest.approx(freq["random"].sum())


def test_intensity_temperature_flattens_preference():
    """A larger temperature moves intensity masking towards uniform sampling."""
    image = np.zeros((1, 64, 64), np.float32)
    image[:, :, 32:] = 1.0  # right half bright
    rng = np.random.default_rng(1)

    def bright_share(temperature: float) -> float:
        task = MIMPretext(ratio=0.25, patch=16, mask="intensity", temperature=temperature)
        masks = [task.make_mask(image, rng)[0] for _ in range(50)]
        return float(np.mean([m[:, 32:].sum() / m.sum() for m in masks]))

    sharp, flat = bright_share(1.0), bright_share(50.0)
    assert sharp > 0.95
    assert 0.4 < flat < sharp - 0.2


def test_mask_ratio_is_exact_in_2d_and_3d():
    rng = np.random.default_rng(0)
    for shape, cell in (((1, 64, 64), (16, 16)), ((1, 8, 64, 64), (4, 16, 16))):
        image = rng.random(shape, dtype=np.float32)
        for mode in ("random", "intensity"):
            m = MIMPretext(ratio=0.6, patch=cell, mask=mode).make_mask(image, rng)
            n_cells = np.prod([s // c for s, c in zip(shape[1:], cell)])
            assert m.shape == shape
            assert m.mean() == pytest.approx(round(0.6 * n_cells) / n_cells)


@needs_vessels
def test_channel_masking_masks_different_positions_per_channel(vessel):
    image = np.moveaxis(two_channel(vessel[0]), -1, 0)
    image /= image.max()
    rng = np.random.default_rng(0)
    for mode in ("channel", "intensity,channel"):
        task = MIMPretext(ratio=0.5, patch=(2, 16, 16), mask=mode)
        task.check_input(image.shape, 3)
        m = task.make_mask(image, rng)
        assert m.shape == image.shape
        assert m[0].mean() == pytest.approx(m[1].mean())  # same ratio in each channel
        differ = (m[0] != m[1]).mean()
        assert differ > 0.2, f"{mode}: channel masks should differ, got {differ:.2f}"
        # somewhere a voxel hidden in one channel is visible in the other (cross-channel cue)
        assert (m[0] & ~m[1]).any() and (m[1] & ~m[0]).any()
    shared = MIMPretext(ratio=0.5, patch=(2, 16, 16), mask="random").make_mask(image, rng)
    assert (shared[0] == shared[1]).all()


def test_mask_options_are_validated():
    with pytest.raises(RegconError, match="between 0 and 1"):
        MIMPretext(ratio=1.0)
    with pytest.raises(RegconError, match="between 0 and 1"):
        MIMPretext(ratio=0.0)
    with pytest.raises(RegconError, match="Unknown mask"):
        MIMPretext(mask="checkerboard")
    with pytest.raises(RegconError, match="both random and intensity"):
        MIMPretext(mask="random,intensity")
    with pytest.raises(RegconError, match="multi-channel"):
        MIMPretext(mask="channel").check_input((1, 8, 64, 64), 3)
    with pytest.raises(RegconError, match="3 values but the model is 2D"):
        MIMPretext(patch="4,16,16").check_input((1, 1, 64, 64), 2)
    assert parse_mask_modes("intensity+channel") == ("channel", "intensity")
    assert MIMPretext(patch="4,16,16").cell_size((8, 64, 64)) == (4, 16, 16)
    assert MIMPretext(patch=32).cell_size((8, 16, 16)) == (8, 16, 16)  # clipped to the patch


def test_anisotropic_cell_follows_voxel_size():
    assert anisotropic_cell(16, (5.0, 0.994, 0.994)) == (3, 16, 16)  # two-photon: 5 µm z, ~1 µm xy
    assert anisotropic_cell(8, (1.0, 1.0, 1.0)) == (8, 8, 8)  # isotropic
    assert anisotropic_cell(16, None) == (4, 16, 16)  # unknown: the usual 1:4 guess
    assert MIMPretext(patch=16, voxel_size=(5.0, 1.0, 1.0)).cell_size((16, 64, 64)) == (3, 16, 16)


# ---- loss ------------------------------------------------------------------------------


def test_loss_is_zero_for_the_input_and_counts_only_masked_voxels():
    rng = np.random.default_rng(0)
    task = MIMPretext(ratio=0.5, patch=(2, 8, 8), mask="channel")
    batch = task.prepare({"image": rng.random((2, 2, 4, 16, 16), dtype=np.float32)}, rng)
    mask = batch["mask"]
    assert mask.shape == batch["target"].shape and (batch["input"][mask] == 0).all()
    loss, _ = task.loss(Identity(batch["target"]), batch)
    assert float(loss) == 0.0
    # changing the prediction where nothing is masked changes nothing ...
    off = batch["target"] + 5.0 * (~mask)
    assert float(task.loss(Identity(off), batch)[0]) == 0.0
    # ... while an error of 1 on masked voxels costs exactly 1 per masked voxel
    err = batch["target"] + 1.0 * mask
    assert float(task.loss(Identity(err), batch)[0]) == pytest.approx(1.0)
    # returning the (zeroed) masked input is not free
    assert float(task.loss(Identity(batch["input"]), batch)[0]) > 0.01
    assert float(masked_mse(err, batch["target"], torch.zeros_like(mask))) == 0.0


@needs_vessels
@pytest.mark.parametrize("mask", ["random", "intensity"])
def test_reconstruction_loss_falls_on_real_data(vessel, mask):
    """30 steps of 3D MIM on a real two-photon crop lower the loss on a fixed held-out masked batch."""
    job = pretrain_job([vessel[0]], "mim", ndim=3, patch_size="4,32,32", steps=30, batch_size=2, base=4, depth=2,
                       lr=3e-3, device="cpu", checkpoint_every=0,
                       method_params={"ratio": 0.5, "patch": (2, 8, 8), "mask": mask})
    fixed = job.task.prepare(job.sampler.sample(4), np.random.default_rng(123))

    def held_out() -> float:
        with torch.no_grad():
            return float(job.task.loss(job.model.eval(), fixed)[0])

    before = held_out()
    job.run()
    after = held_out()
    assert after < 0.7 * before, (before, after)


@needs_vessels
def test_3d_multichannel_flows_end_to_end(vessel, tmp_path):
    """2-channel real volume: intensity+channel MIM (3D) -> bundle -> fine-tune from it -> prediction."""
    raw, lab = vessel
    image = two_channel(raw)  # (Z, Y, X, 2)
    job = pretrain_job([image], "mim", ndim=3, channel_axis=-1, patch_size="4,32,32", steps=3, batch_size=2,
                       base=4, depth=2, device="cpu", checkpoint_every=0,
                       method_params={"mask": "intensity,channel", "patch": "2,8,8"})
    batch = job.task.prepare(job.sampler.sample(2), np.random.default_rng(0))
    assert batch["input"].shape == (2, 2, 4, 32, 32) and batch["mask"].shape == (2, 2, 4, 32, 32)
    assert (batch["mask"][:, 0] != batch["mask"][:, 1]).any()
    pre = job.run()
    assert pre["model"]["in_channels"] == 2 and pre["model"]["out_channels"] == 2 and pre["model"]["ndim"] == 3
    assert pre["pretext"]["params"]["mask"] == "channel,intensity"
    sparse = np.zeros_like(lab)
    sparse[2] = lab[2] + 1  # one painted plane: 1 = background, 2 = vessel
    ft = finetune_job(image, sparse, init=pre, channel_axis=-1, steps=3, batch_size=2, device="cpu",
                      checkpoint_every=0).run()
    pred, probs = run_predict(ft, image, channel_axis=-1, probabilities=True, device="cpu")
    assert pred.shape == raw.shape and probs.shape == (2, *raw.shape)
    assert set(np.unique(pred)) <= {1, 2}


# ---- voxel size and the command line ---------------------------------------------------


@needs_vessels
def test_read_voxel_size_from_imagej_tags(tmp_path):
    import tifffile
    assert read_voxel_size(VESSEL_DIR / "raw_01.tif") == pytest.approx((5.0, 0.994, 0.994))
    assert read_voxel_size(VESSEL_DIR / "raw_02.tif") == pytest.approx((5.0, 1.59, 1.59))
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    assert read_voxel_size(tmp_path / "plain.tif") is None
    np.save(tmp_path / "a.npy", np.zeros((4, 8, 8), np.uint8))
    assert read_voxel_size(tmp_path / "a.npy") is None


@needs_vessels
def test_cli_3d_default_cell_respects_voxel_size(vessel, tmp_path, capsys):
    import tifffile
    path = tmp_path / "crop.tif"
    tifffile.imwrite(path, vessel[0], imagej=True, resolution=(1 / 0.994, 1 / 0.994),
                     metadata={"spacing": 5.0, "unit": "um"})
    out = tmp_path / "mim.pt"
    code = main(["pretrain", str(path), "--ndim", "3", "--patch-size", "8,32,32", "--mask", "intensity",
                 "--steps", "2", "--base", "4", "--depth", "2", "--batch-size", "2", "--device", "cpu",
                 "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "voxel size (z, y, x) 5 x 0.994 x 0.994" in err and "mask cells 3x16x16" in err
    params = load_bundle(out)["pretext"]["params"]
    assert params["voxel_size"] == pytest.approx([5.0, 0.994, 0.994]) and params["mask"] == "intensity"
    code = main(["pretrain", str(path), "--ndim", "3", "--patch-size", "8,32,32", "--mask-patch", "2,8,8",
                 "--steps", "1", "--base", "4", "--depth", "2", "--batch-size", "2", "--device", "cpu",
                 "--out", str(out), "--quiet", "--overwrite"])
    assert code == 0 and load_bundle(out)["pretext"]["params"]["patch"] == [2, 8, 8]


@pytest.mark.parametrize("args, message", [
    (["--mask-ratio", "1.5"], "mask ratio must be between 0 and 1"),
    (["--mask-ratio", "0"], "mask ratio must be between 0 and 1"),
    (["--mask", "channel"], "needs a multi-channel image"),
    (["--ndim", "3"], "--ndim 3 needs a ZYX stack"),
    (["--mask", "stripes"], "Unknown mask strategy"),
])
def test_cli_bad_mim_input_exits_2_with_one_sentence(tmp_path, capsys, args, message):
    np.save(tmp_path / "plane.npy", np.random.default_rng(0).random((64, 64)).astype(np.float32))
    out = tmp_path / "m.pt"
    code = main(["pretrain", str(tmp_path / "plane.npy"), "--out", str(out), "--steps", "1", "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and err.count("\n") == 0
    assert not out.exists()
