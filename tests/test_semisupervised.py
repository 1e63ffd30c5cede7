"""Semi-supervised fine-tuning: cross pseudo supervision, patch/pixel contrast, runs and bundles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_regcon.cli import main
from napari_regcon.core.checkpoint import load_bundle, save_bundle
from napari_regcon.core.errors import RegconError
from napari_regcon.core.labels import IGNORE, build_labelset
from napari_regcon.core.models import UNetConfig
from napari_regcon.core.normalize import fit_normalization
from napari_regcon.core.sampling import SemiSupervisedSampler
from napari_regcon.core.semisupervised import (
    SemiSupervisedTask,
    confident_pseudo_labels,
    cross_pseudo_loss,
    patch_contrast,
    pixel_contrast,
    ramp_weight,
    supcon,
)
from napari_regcon.core.volume import as_volume
from napari_regcon.core.workflows import finetune_job, pretrain_job, run_predict


def clustered(labels: torch.Tensor, dim: int = 16, spread: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Embeddings (N, dim): one random centre per class plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(int(labels.max()) + 1, dim, generator=g)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g)


# ---- cross pseudo supervision ------------------------------------------------------------


def test_cross_supervision_uses_only_confident_pixels():
    torch.manual_seed(0)
    probs = torch.full((2, 2, 8, 8), 0.5)
    probs[:, 1, :4] = 0.95  # top half: confident class 1
    probs[:, 0, :4] = 0.05
    probs[:, 0, 4:] = 0.6  # bottom half: unsure (0.6 < 0.8)
    probs[:, 1, 4:] = 0.4
    pseudo = confident_pseudo_labels(probs, 0.8)
    assert (pseudo[:, :4] == 1).all() and (pseudo[:, 4:] == IGNORE).all()
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    loss = cross_pseudo_loss(logits, pseudo)
    loss.backward()
    assert logits.grad[:, :, 4:].abs().max() == 0  # unsure pixels give no gradient
    assert logits.grad[:, :, :4].abs().min() > 0
    changed = logits.detach().clone()
    changed[:, :, 4:] = 100 * torch.randn(2, 2, 4, 8)
    assert float(cross_pseudo_loss(changed, pseudo)) == pytest.approx(float(loss.detach()))
    nothing = confident_pseudo_labels(probs, 0.99)
    assert float(cross_pseudo_loss(logits.detach(), nothing)) == 0.0


def test_ramp_weight_rises_from_near_zero_to_one():
    w = [ramp_weight(s, 100, 0.4) for s in range(0, 101, 10)]
    assert w[0] < 0.01 and all(a <= b for a, b in zip(w, w[1:])) and w[4] == 1.0 and w[-1] == 1.0


# ---- contrast --------------------------------------------------------------------------


def test_supcon_is_lower_when_same_class_features_are_close():
    labels = torch.arange(3).repeat_interleave(20)
    close = clustered(labels)
    shuffled = close[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    assert float(supcon(close, labels)) < float(supcon(shuffled, labels)) - 1.0
    assert float(supcon(close, torch.zeros_like(labels))) == 0.0  # one class: nothing to contrast


def test_pixel_contrast_is_lower_for_class_clustered_features():
    torch.manual_seed(0)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, :, 8:] = 1
    emb = clustered(labels.reshape(-1)).reshape(2, 16, 16, -1).movedim(-1, 1)
    noise = torch.randn_like(emb)
    hard = torch.zeros_like(labels, dtype=torch.bool)
    good = float(pixel_contrast(emb, labels, hard, per_class=64))
    bad = float(pixel_contrast(noise, labels, hard, per_class=64))
    assert good < bad - 1.0


def test_patch_contrast_is_lower_for_class_clustered_features_and_needs_pure_patches():
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, :16] = 1  # each 8x8 patch is pure: top half class 1, bottom half class 0
    emb = clustered(labels.reshape(-1), spread=0.5).reshape(2, 32, 32, -1).movedim(-1, 1)
    noise = torch.randn_like(emb)
    good = float(patch_contrast(emb, labels, 2, (8, 8)))
    bad = float(patch_contrast(noise, labels, 2, (8, 8)))
    assert good < bad - 0.5
    mixed = labels.clone()
    mixed[:, :, ::2] = 1 - mixed[:, :, ::2]  # every patch 50/50: no patch is pure enough
    assert float(patch_contrast(emb, mixed, 2, (8, 8))) == 0.0


# ---- unannotated pixels ----------------------------------------------------------------


def test_unannotated_pixels_are_ignored():
    """Pixels whose label is IGNORE (0 in the painting) affect neither the supervised nor the contrastive terms."""
    torch.manual_seed(0)
    task = SemiSupervisedTask(2, UNetConfig(ndim=2, in_channels=1, out_channels=2, base=4, depth=2), 10)
    target = torch.full((2, 16, 16), IGNORE, dtype=torch.long)
    target[:, :4, :4] = 0
    target[:, -4:, -4:] = 1
    logits = torch.randn(2, 2, 16, 16, requires_grad=True)
    loss = task.supervised_loss(logits, target)
    loss.backward()
    unannotated = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert logits.grad[unannotated].abs().max() == 0 and logits.grad[~unannotated].abs().max() > 0
    emb = torch.randn(2, 8, 16, 16, requires_grad=True)
    hard = torch.zeros_like(target, dtype=torch.bool)
    pix = pixel_contrast(emb, target, hard, per_class=256)
    patch = patch_contrast(emb, target, 2, (4, 4), min_known=0.5)
    (pix + patch).backward()
    grad = emb.grad.abs().sum(1)
    assert grad[target == IGNORE].max() == 0 and grad[target != IGNORE].max() > 0
    nothing = torch.full_like(target, IGNORE)
    assert float(task.supervised_loss(logits, nothing)) == 0.0


def test_labels_zero_never_become_targets(em_small):
    """Through the real sampler and task: the painted 0 stays IGNORE in every labeled target."""
    raw, truth = em_small
    sparse = np.zeros_like(truth)
    sparse[0, 10:20, 10:60] = truth[0, 10:20, 10:60]
    vol = as_volume(raw)
    sampler = SemiSupervisedSampler([vol], fit_normalization([vol]), (32, 32), [build_labelset(sparse, raw.shape)],
                                    [vol], seed=0)
    batch = sampler.sample(4)
    assert batch["image_u"].shape == (4, 1, 32, 32) and batch["target"].shape == (4, 32, 32)
    task = SemiSupervisedTask(2, UNetConfig(ndim=2, in_channels=1, out_channels=2, base=4, depth=2), 10)
    prepared = task.prepare(batch, np.random.default_rng(0))
    known = int((prepared["target"] != IGNORE).sum())
    assert 0 < known < prepared["target"].numel() * 0.6
    with pytest.raises(RegconError, match="unlabeled"):
        task.prepare({k: v for k, v in batch.items() if k != "image_u"}, np.random.default_rng(0))


# ---- runs ------------------------------------------------------------------------------


def _sparse(truth: np.ndarray) -> np.ndarray:
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    return labels


def _check_predicts(bundle: dict, raw: np.ndarray, path) -> None:
    save_bundle(bundle, path)
    loaded = load_bundle(path)
    assert loaded["kind"] == "segmentation"
    assert loaded["pretext"]["finetune"]["method"] == "semisupervised"
    assert "net2.head.weight" in loaded["training"]["task_state"]  # network 2 kept for resuming only
    assert not any(k.startswith("net2.") for k in loaded["state_dict"])
    pred, probs = run_predict(loaded, raw, probabilities=True, device="cpu")
    assert pred.shape == raw.shape and set(np.unique(pred)) <= {1, 2}
    assert np.allclose(probs.sum(0), 1, atol=1e-4)


def test_short_run_from_random_init_gives_a_bundle_that_predicts(em_small, tiny, tmp_path):
    raw, truth = em_small
    job = finetune_job(raw[:2], _sparse(truth[:2]), unlabeled=[raw[2:]], steps=6, device="cpu",
                       checkpoint_every=0, **tiny)
    assert isinstance(job.task, SemiSupervisedTask)
    w1 = job.model.encoder[0][0].weight
    assert not torch.allclose(w1, job.task.net2.encoder[0][0].weight)  # differently initialised networks
    logs = []
    bundle = job.run(callback=lambda e: logs.append(e.logs) if e.event == "step" else None)
    assert all(np.isfinite(list(log.values())).all() for log in logs)
    assert logs[-1]["ramp"] > logs[0]["ramp"]
    _check_predicts(bundle, raw, tmp_path / "semi.pt")


def test_short_run_from_pretrained_bundle_gives_a_bundle_that_predicts(em_small, tiny, tmp_path):
    raw, truth = em_small
    pre = pretrain_job([raw], "mim", steps=2, device="cpu", checkpoint_every=0, **tiny).run()
    job = finetune_job(raw[:2], _sparse(truth[:2]), init=pre, unlabeled=[raw[2:]], steps=4, device="cpu",
                       checkpoint_every=0, batch_size=2, patch_size=32,
                       semi_params={"threshold": 0.6, "patch_cell": 8})
    for net in (job.model, job.task.net2):  # both networks start from the pretrained encoder/decoder
        assert torch.equal(net.encoder[0][0].weight, pre["state_dict"]["encoder.0.0.weight"])
    _check_predicts(job.run(), raw, tmp_path / "semi_pre.pt")


def test_bad_semi_parameters_and_mismatched_unlabeled_images(em_small, tiny):
    raw, truth = em_small
    with pytest.raises(RegconError, match="semi-supervised parameter"):
        finetune_job(raw, _sparse(truth), unlabeled=[raw], semi_params={"bogus": 1}, **tiny)
    with pytest.raises(RegconError, match="2D"):  # a 3D model cannot use a 2D unlabeled image
        finetune_job(raw, _sparse(truth), unlabeled=[raw[0]], ndim=3, **tiny)


def test_cli_finetune_with_unlabeled(em_small, tmp_path):
    import tifffile
    raw, truth = em_small
    tifffile.imwrite(tmp_path / "img.tif", raw[:2], photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", _sparse(truth[:2]), photometric="minisblack")
    tifffile.imwrite(tmp_path / "unl.tif", raw[2:], photometric="minisblack")
    out = tmp_path / "model.pt"
    code = main(["finetune", "--image", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
                 "--unlabeled", str(tmp_path / "unl.tif"), "--out", str(out), "--steps", "3", "--base", "4",
                 "--depth", "2", "--batch-size", "2", "--patch-size", "32", "--device", "cpu", "--quiet"])
    assert code == 0 and load_bundle(out)["pretext"]["finetune"]["unlabeled_images"] == 1


def test_interrupted_run_resumes_with_network_2(em_small, tiny, tmp_path):
    """The training state keeps network 2, the heads and the ramp step, so a stopped run continues."""
    raw, truth = em_small
    kwargs = dict(unlabeled=[raw[2:]], steps=4, device="cpu", checkpoint_every=0, **tiny)
    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    first = finetune_job(raw[:2], _sparse(truth[:2]), **kwargs)
    stopped = first.run(out=tmp_path / "semi.pt", should_stop=stop_after_two)
    assert stopped["training"]["step"] == 2 and int(stopped["training"]["task_state"]["step"]) == 2
    resumed = finetune_job(raw[:2], _sparse(truth[:2]), resume=load_bundle(tmp_path / "semi.pt"), **kwargs)
    seen = []
    final = resumed.run(callback=lambda e: seen.append((e.step, e.logs.get("ramp"))) if e.event == "step" else None)
    assert [s for s, _ in seen] == [3, 4] and final["training"]["step"] == 4
    assert seen[0][1] == pytest.approx(ramp_weight(2, 4, 0.4))  # the ramp continues where it stopped
    assert torch.equal(resumed.task.net2.head.bias, final["training"]["task_state"]["net2.head.bias"])
