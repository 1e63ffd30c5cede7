"""A 3D network follows the voxel size: planes far apart are convolved in plane at the first levels
(nnU-Net's rule), from the file's metadata on the CLI and the layer's scale in the widget."""

from __future__ import annotations

import numpy as np
import tifffile
import torch

from napari_regcon.cli import main
from napari_regcon.core.bundle import as_bundle
from napari_regcon.core.models import UNet, UNetConfig, anisotropic_plan
from napari_regcon.core.workflows import finetune_job, pretrain_job

TINY = dict(steps=2, batch_size=1, base=4, depth=2, checkpoint_every=0, device="cpu")


def test_plan_keeps_far_planes_apart_until_the_voxel_is_near_isotropic() -> None:
    # VesselNN: 5 µm between planes, ~1 µm in plane -> in plane at the first two levels, 3D below
    assert anisotropic_plan((5.0, 0.994, 0.994), 3, 8) == ([False, False, True], [False, False, True, True])
    # isotropic voxels: 3D everywhere, Z pooled while the patch keeps >= 2 planes
    assert anisotropic_plan((1.0, 1.0, 1.0), 3, 8) == ([True, True, False], [True, True, True, True])
    # EM serial sections (50 nm vs 6 nm): in plane until the bottleneck (8x coarser in plane there)
    assert anisotropic_plan((0.05, 0.006, 0.006), 3, 8) == ([False] * 3, [False, False, False, True])


def test_in_plane_levels_have_1x3x3_kernels() -> None:
    net = UNet(UNetConfig(ndim=3, base=4, depth=2, pool_z=[False, True], conv_z=[False, True, True]))
    kernels = lambda block: {m.kernel_size for m in block if isinstance(m, torch.nn.Conv3d)}  # noqa: E731
    assert kernels(net.encoder[0]) == {(1, 3, 3)} and kernels(net.decoder[-1]) == {(1, 3, 3)}
    assert kernels(net.encoder[1]) == {(3, 3, 3)} and kernels(net.encoder[2]) == {(3, 3, 3)}
    assert [u.kernel_size for u in net.upsample] == [(2, 2, 2), (1, 2, 2)]
    assert net(torch.zeros(1, 1, 4, 16, 16)).shape == (1, 2, 4, 16, 16)


def test_bundles_from_before_conv_z_load_as_3x3x3() -> None:
    cfg = UNetConfig.from_dict({"ndim": 3, "in_channels": 1, "out_channels": 2, "base": 4, "depth": 2,
                                "pool_z": [True, False]})
    assert cfg.conv_z == [True, True, True]
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg


def _stack(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 255, (8, 32, 32), dtype=np.uint8)
    labels = np.zeros(image.shape, np.uint8)
    labels[:, :4] = 1
    labels[:, -4:] = 2
    return image, labels


def test_jobs_build_the_network_the_voxel_size_asks_for() -> None:
    image, labels = _stack(np.random.default_rng(0))
    job = finetune_job(image, labels, ndim=3, patch_size=(8, 32, 32), voxel_size=(5.0, 1.0, 1.0), **TINY)
    assert job.model.config.conv_z == [False, False, True] and job.model.config.pool_z == [False, False]
    bundle = as_bundle(job.run())
    assert bundle.model.conv_z == [False, False, True]
    # a correction round, and fine-tuning from a pretrained model, keep the architecture they start from
    again = finetune_job(image, labels, init=bundle.to_dict(), patch_size=(8, 32, 32), **TINY)
    assert again.model.config.conv_z == [False, False, True]
    pre = pretrain_job([image], "mim", ndim=3, patch_size=(8, 32, 32), voxel_size=(5.0, 1.0, 1.0), **TINY).run()
    assert as_bundle(pre).model.conv_z == [False, False, True]
    assert finetune_job(image, labels, init=pre, **TINY).model.config.conv_z == [False, False, True]
    # no voxel size: the network of earlier versions
    assert finetune_job(image, labels, ndim=3, patch_size=(8, 32, 32), **TINY).model.config.conv_z == [True] * 3


def test_cli_reads_the_voxel_size_of_the_tiff(tmp_path) -> None:
    image, labels = _stack(np.random.default_rng(1))
    tifffile.imwrite(tmp_path / "img.tif", image, imagej=True, resolution=(1.0, 1.0),
                     metadata={"spacing": 5.0, "unit": "um"})
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    out = tmp_path / "m.pt"
    assert main(["finetune", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"), "--ndim", "3",
                 "--patch-size", "8,32,32", "--steps", "2", "--batch-size", "1", "--base", "4", "--depth", "2",
                 "--out", str(out), "--quiet"]) == 0
    bundle = torch.load(out, weights_only=True)
    assert bundle["model"]["conv_z"] == [False, False, True]
