"""Helpers shared by the contrastive pretext tests (regcon, lrc, glrp): tiny nets, real EM batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_regcon.cli import main
from napari_regcon.core.checkpoint import load_bundle
from napari_regcon.core.models import UNet, UNetConfig, anisotropic_pool_z
from napari_regcon.core.normalize import fit_normalization
from napari_regcon.core.pretext import get_pretext
from napari_regcon.core.pretext.base import Task
from napari_regcon.core.sampling import PatchSampler
from napari_regcon.core.volume import as_volume
from napari_regcon.core.workflows import load_init, model_from_bundle, pretrain_job


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny nets run fastest on one thread; torch's pool of 2 stalls when the shared 2 cores are busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY_CLI = ["--steps", "3", "--base", "4", "--depth", "2", "--patch-size", "32", "--batch-size", "2", "--quiet"]


def em_stack(raw: np.ndarray, channels: int) -> np.ndarray:
    """The EM crop (Z, Y, X), or with a second channel (a smoothed copy) as (C, Z, Y, X)."""
    if channels == 1:
        return raw
    from scipy.ndimage import gaussian_filter
    return np.stack([raw.astype(np.float32), gaussian_filter(raw.astype(np.float32), (0, 2, 2))])


def tiny_setup(raw: np.ndarray, ndim: int, channels: int, task: Task, batch: int = 4, seed: int = 0
               ) -> tuple[UNet, dict[str, torch.Tensor]]:
    """A tiny U-Net bound to ``task`` and one prepared batch of real EM patches."""
    data = em_stack(raw, channels)
    vol = as_volume(data, 0 if channels > 1 else None)
    patch = (32, 32) if ndim == 2 else (4, 32, 32)
    sampler = PatchSampler([vol], fit_normalization([vol]), patch, seed=seed)
    pool_z = anisotropic_pool_z(patch[0], 2, min_z=2) if ndim == 3 else []
    torch.manual_seed(seed)
    model = UNet(UNetConfig(ndim=ndim, in_channels=channels, out_channels=channels, base=4, depth=2, pool_z=pool_z))
    task.bind(model)
    options = getattr(task, "sample_options", None) or {}
    prepared = task.prepare(sampler.sample(batch, **options), np.random.default_rng(seed))
    return model, prepared


def check_loss_and_gradients(model: UNet, task: Task, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """The loss is a finite scalar; gradients reach every encoder/decoder weight and every task head,
    never the segmentation head (which the pretext does not use)."""
    loss, logs = task.loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss), loss
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("head."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name, p in task.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("encoder."))
    return logs


def evaluate(job, batch_size: int = 8, seed: int = 123) -> dict[str, float]:
    """The task's logs (similarities, retrieval) on a fixed batch, without training."""
    task, model = job.task, job.model
    task.bind(model)
    state = job.sampler.rng.bit_generator.state
    job.sampler.rng = np.random.default_rng(seed)
    batch = task.prepare(job.sampler.sample(batch_size, **(getattr(task, "sample_options", None) or {})),
                         np.random.default_rng(seed))
    job.sampler.rng.bit_generator.state = state
    model.eval()
    task.eval()
    with torch.no_grad():
        _, logs = task.loss(model, batch)
    model.train()
    task.train()
    return logs


def train_and_evaluate(raw: np.ndarray, method: str, steps: int = 40, **params) -> tuple[dict, dict]:
    """Logs on a fixed batch before and after ``steps`` training steps of a tiny net on real EM."""
    job = pretrain_job([raw], method, patch_size=32, base=4, depth=2, batch_size=4, steps=steps, lr=3e-3,
                       seed=0, device="cpu", checkpoint_every=0, method_params=params)
    before = evaluate(job)
    job.run()
    return before, evaluate(job)


def cli_pretrain_then_finetune(method: str, image: Path, labels: Path, tmp: Path) -> None:
    """``pretrain --method`` writes a bundle that ``finetune --init`` accepts; only the head stays random."""
    pre, ft = tmp / f"{method}.pt", tmp / f"{method}_ft.pt"
    assert main(["pretrain", str(image), "--method", method, "--out", str(pre), *TINY_CLI]) == 0
    bundle = load_bundle(pre)
    assert bundle["kind"] == "pretrained" and bundle["pretext"]["method"] == method
    assert bundle["pretext"]["transfer"] == ["encoder.", "upsample.", "decoder."]
    assert get_pretext(method, **bundle["pretext"]["params"]).params() == bundle["pretext"]["params"]
    seg = UNet(UNetConfig.from_dict({**bundle["model"], "out_channels": 3}))
    assert sorted(load_init(seg, bundle)) == ["head.bias", "head.weight"]
    assert main(["finetune", "--image", str(image), "--labels", str(labels), "--init", str(pre),
                 "--out", str(ft), *TINY_CLI]) == 0
    tuned = model_from_bundle(load_bundle(ft))
    for k in bundle["state_dict"]:
        assert k in tuned.state_dict()
    assert load_bundle(ft)["pretext"]["method"] == method
