"""The U-Net, the one training loop (events, cancel, checkpoints, resume) and fine-tuning quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_regcon.core.checkpoint import load_bundle
from napari_regcon.core.metrics import dice
from napari_regcon.core.models import UNetConfig, anisotropic_pool_z, build_model
from napari_regcon.core.workflows import finetune_job, load_init, pretrain_job, run_predict


@pytest.mark.parametrize("ndim, shape, pool_z", [(2, (1, 3, 32, 48), []), (3, (1, 2, 4, 32, 32), [True, False])])
def test_unet_shapes_any_channels(ndim, shape, pool_z) -> None:
    cfg = UNetConfig(ndim=ndim, in_channels=shape[1], out_channels=5, base=4, depth=2, pool_z=pool_z)
    net = build_model(cfg).eval()
    out = net(torch.randn(*shape))  # batch size 1 works: GroupNorm, not BatchNorm
    assert out.shape == (1, 5, *shape[2:])
    z, dec = net.features(torch.randn(*shape))
    assert dec[-1].shape[1] == 4 and len(dec) == 2


def test_anisotropic_pooling_rule() -> None:
    assert anisotropic_pool_z(16, 3) == [True, True, False]
    assert anisotropic_pool_z(4, 3) == [False, False, False]


def test_finetune_beats_chance_on_real_em(em_small, tiny) -> None:
    """A few dozen steps on one labeled EM slice give membrane Dice well above chance elsewhere."""
    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    job = finetune_job(raw, labels, steps=60, lr=3e-3, seed=0, base=8, depth=2, batch_size=4, patch_size=64)
    bundle = job.run()
    pred, _ = run_predict(bundle, raw, tile=128)
    membrane_fraction = float((truth[1:] == 2).mean())
    d = dice(pred[1:], truth[1:], 2)
    # chance (random guessing with the right rate) gives Dice = membrane fraction (~0.25)
    assert d > membrane_fraction + 0.3, (d, membrane_fraction)
    assert set(np.unique(pred)) <= {1, 2}


def test_events_and_checkpoints(em_small, tiny, tmp_path) -> None:
    raw, _ = em_small
    job = pretrain_job([raw], "mim", steps=6, checkpoint_every=2, seed=0, **tiny)
    out = tmp_path / "p.pt"
    events = list(job.events(out=out))
    kinds = [e.event for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("step") == 6 and kinds.count("checkpoint") == 2
    steps = [e for e in events if e.event == "step"]
    assert all(np.isfinite(e.loss) and e.eta >= 0 for e in steps)
    assert steps[-1].eta == 0
    bundle = load_bundle(out)
    assert bundle["kind"] == "pretrained" and bundle["training"]["step"] == 6
    assert bundle["history"]["step"] == [1, 2, 3, 4, 5, 6]


def test_cancel_stops_within_one_step_and_keeps_bundle(em_small, tiny, tmp_path) -> None:
    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    job = finetune_job(raw, labels, steps=1000, seed=0, **tiny)
    seen = []

    def stop() -> bool:
        return len(seen) >= 3

    out = tmp_path / "ft.pt"
    for ev in job.events(out=out, should_stop=stop):
        if ev.event == "step":
            seen.append(ev.step)
    assert seen == [1, 2, 3] and ev.event == "cancelled"
    bundle = load_bundle(out)
    assert bundle["training"]["step"] == 3
    pred, _ = run_predict(bundle, raw[:1])
    assert pred.shape == raw[:1].shape


def test_resume_continues_step_count_and_loss_curve(em_small, tiny, tmp_path) -> None:
    """Stopping at step 5 and resuming gives the same 10-step loss curve as one uninterrupted run."""
    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    full = finetune_job(raw, labels, steps=10, seed=3, **tiny).run()
    out = tmp_path / "half.pt"
    count = {"n": 0}

    def stop() -> bool:
        count["n"] += 1
        return count["n"] > 5

    finetune_job(raw, labels, steps=10, seed=3, **tiny).run(out=out, should_stop=stop)
    half = load_bundle(out)
    assert half["training"]["step"] == 5
    resumed = finetune_job(raw, labels, steps=10, seed=3, resume=half, **tiny).run()
    assert resumed["history"]["step"] == list(range(1, 11))
    np.testing.assert_allclose(resumed["history"]["loss"], full["history"]["loss"], rtol=1e-4, atol=1e-5)


def test_pretrained_transfer_keys(em_small, tiny) -> None:
    """Encoder and decoder transfer from a pretrained bundle; only the head stays random."""
    raw, truth = em_small
    pre = pretrain_job([raw], "mim", steps=2, seed=0, **tiny).run()
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    job = finetune_job(raw, labels, init=pre, steps=1, seed=0, patch_size=32, batch_size=2)
    missing = load_init(job.model, pre)
    assert sorted(missing) == ["head.bias", "head.weight"]
    for k, v in pre["state_dict"].items():
        if not k.startswith("head."):
            torch.testing.assert_close(job.model.state_dict()[k], v)


def test_seeded_runs_are_reproducible(em_small, tiny) -> None:
    raw, _ = em_small
    a = pretrain_job([raw], "mim", steps=3, seed=7, **tiny).run()
    b = pretrain_job([raw], "mim", steps=3, seed=7, **tiny).run()
    assert a["history"]["loss"] == b["history"]["loss"]


def test_init_mismatch_says_what_the_bundle_is_and_what_is_needed(em_small, tiny) -> None:
    from napari_regcon.core.errors import RegconError

    raw, _ = em_small
    pre = pretrain_job([raw], "mim", steps=1, seed=0, **tiny).run()  # base 4, depth 2
    other = build_model(UNetConfig(ndim=2, in_channels=1, out_channels=2, base=8, depth=2))
    with pytest.raises(RegconError, match=r"pretrained 2D network \(base 4.*needs a 2D network \(base 8"):
        load_init(other, pre)


def test_prefetch_gives_the_same_run_and_resumes_alike(em_small, tiny, tmp_path) -> None:
    """Drawing batches in a background thread changes nothing a seed fixes: losses, resumed runs."""
    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    plain = finetune_job(raw, labels, steps=8, seed=5, **tiny).run()
    job = finetune_job(raw, labels, steps=8, seed=5, **tiny)
    job.config.prefetch = True
    ahead = job.run()
    assert ahead["history"]["loss"] == plain["history"]["loss"]
    count = {"n": 0}

    def stop() -> bool:
        count["n"] += 1
        return count["n"] > 4

    half_job = finetune_job(raw, labels, steps=8, seed=5, **tiny)
    half_job.config.prefetch = True  # a batch is in flight when the run stops: the bundle must not count it
    half_job.run(out=tmp_path / "half.pt", should_stop=stop)
    resumed = finetune_job(raw, labels, steps=8, seed=5, resume=load_bundle(tmp_path / "half.pt"), **tiny).run()
    np.testing.assert_allclose(resumed["history"]["loss"], plain["history"]["loss"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, kernel", [((2, 3, 8, 12), (2, 2)), ((1, 2, 4, 8, 6), (2, 2, 2)), ((1, 2, 3, 8, 8), (1, 2, 2))])
def test_max_pool_without_autograd_equals_the_library_pool(shape, kernel) -> None:
    from napari_regcon.core.models import max_pool

    x = torch.randn(*shape)
    ref = torch.nn.functional.max_pool2d(x, kernel) if len(kernel) == 2 else torch.nn.functional.max_pool3d(x, kernel)
    with torch.inference_mode():
        assert torch.equal(max_pool(x, kernel), ref)
    xg = x.clone().requires_grad_()
    max_pool(xg, kernel).sum().backward()  # training: the library's pool and its gradient
    assert xg.grad is not None and int(xg.grad.sum()) == ref.numel()
