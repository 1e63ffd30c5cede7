"""Shared pieces of the contrastive pretexts: InfoNCE, two views with exact correspondence,
region pooling, grouped (neighbouring-slice) sampling and head binding in the training loop."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _pretext_utils import single_thread  # noqa: F401  (autouse fixture)

from napari_regcon.core.normalize import fit_normalization
from napari_regcon.core.pretext import get_pretext
from napari_regcon.core.pretext.contrastive import multi_positive_info_nce, pool_regions
from napari_regcon.core.pretext.views import (
    ViewGeometry,
    align,
    apply_geometry,
    correspondence,
    make_views,
    view_size,
)
from napari_regcon.core.sampling import PatchSampler
from napari_regcon.core.volume import as_volume
from napari_regcon.core.workflows import pretrain_job


def _reference_supcon(emb: torch.Tensor, pos: torch.Tensor, pairs: torch.Tensor, tau: float) -> float:
    """The SupCon formula written out anchor by anchor (the slow way)."""
    e = F.normalize(emb, dim=1)
    total, count = 0.0, 0
    for i in range(len(e)):
        cand = [a for a in range(len(e)) if a != i and pairs[i, a]]
        ps = [p for p in cand if pos[i, p]]
        if not ps:
            continue
        den = sum(math.exp(float(e[i] @ e[a]) / tau) for a in cand)
        total += -sum(math.log(math.exp(float(e[i] @ e[p]) / tau) / den) for p in ps) / len(ps)
        count += 1
    return total / count


def test_info_nce_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(7, 5, generator=g)
    ids = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    pos = ids[:, None] == ids[None, :]
    pairs = torch.ones(7, 7, dtype=torch.bool)
    pairs[0, 6] = pairs[6, 0] = False  # an excluded (uncertain) pair
    got = multi_positive_info_nce(emb, pos, pairs, tau=0.5)
    assert got.item() == pytest.approx(_reference_supcon(emb, pos, pairs, 0.5), rel=1e-5)
    # a (M,) valid vector drops rows entirely: same as the formula on the remaining rows
    valid = torch.tensor([1, 1, 1, 1, 0, 1, 1], dtype=torch.bool)
    got = multi_positive_info_nce(emb, pos, valid, tau=0.5)
    keep = valid.nonzero().ravel()
    ref = _reference_supcon(emb[keep], pos[keep][:, keep], torch.ones(6, 6, dtype=torch.bool), 0.5)
    assert got.item() == pytest.approx(ref, rel=1e-5)


def test_info_nce_identical_positives_beat_shuffled() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(16, 32, generator=g)
    noisy = base + 0.05 * torch.randn(16, 32, generator=g)
    pos = torch.arange(16).repeat(2)
    mask = pos[:, None] == pos[None, :]
    matched = multi_positive_info_nce(torch.cat([base, noisy]), mask, tau=0.1)
    shuffled = multi_positive_info_nce(torch.cat([base, noisy[torch.randperm(16, generator=g)]]), mask, tau=0.1)
    assert matched < 0.2 < shuffled
    loss, stats = multi_positive_info_nce(torch.cat([base, noisy]), mask, tau=0.1, return_stats=True)
    assert stats["top1"] == 1.0 and stats["pos_sim"] > stats["neg_sim"]
    assert stats["top1_chance"] == pytest.approx(1 / 31)


def test_info_nce_without_positives_is_zero_with_gradient() -> None:
    emb = torch.randn(4, 3, requires_grad=True)
    loss = multi_positive_info_nce(emb, torch.eye(4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(emb.grad).all()


def _all_geometries(size: int) -> list[ViewGeometry]:
    return [ViewGeometry(np.zeros((1, 2), np.int64), np.array([[fy, fx]]), np.array([k]), (size, size))
            for fy, fx, k in itertools.product((False, True), (False, True), range(4))]


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_align_is_identity_for_every_flip_and_rotation(stride: int) -> None:
    feat = torch.randn(1, 3, 2, 16 // stride, 16 // stride)  # 3D features: Z is carried along
    for geom in _all_geometries(16):
        index = correspondence(geom, geom, stride)
        assert (index.ravel() == np.arange(index.size)).all()
        out, mask = align(feat, torch.from_numpy(index))
        assert mask.all() and torch.equal(out, feat)


@pytest.mark.parametrize("ndim", [2, 3])
def test_align_maps_view2_onto_view1(ndim: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 2, *((3,) if ndim == 3 else ()), 32, 32)).astype(np.float32)
    pool = F.avg_pool2d if ndim == 2 else (lambda t, k: F.avg_pool3d(t, (1, k, k)))
    for _ in range(10):
        v = make_views(image, rng, multiple=4, augment=False)
        assert v.x1.shape[-2:] == (24, 24)
        for stride in (1, 2, 4):
            f1, f2 = (pool(torch.from_numpy(x), stride) if stride > 1 else torch.from_numpy(x) for x in (v.x1, v.x2))
            out, mask = align(f2, torch.from_numpy(correspondence(v.g1, v.g2, stride)))
            assert torch.allclose(out * mask, f1 * mask, atol=1e-5)
            assert mask.float().mean() >= 0.44  # two 3/4 crops of a patch overlap by >= (1/2)^2 / (3/4)^2


def test_label_maps_follow_the_views() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 50, (3, 32, 32))
    image = labels[:, None].astype(np.float32)
    v = make_views(image, rng, multiple=8, labels=labels, augment=False)
    assert np.array_equal(v.labels1, v.x1[:, 0].astype(int)) and np.array_equal(v.labels2, v.x2[:, 0].astype(int))
    index = correspondence(v.g1, v.g2)
    for b in range(3):
        inside = index[b] >= 0
        assert np.array_equal(v.labels1[b][inside], v.labels2[b].ravel()[index[b][inside]])
    assert apply_geometry(labels, v.g1).dtype == labels.dtype


def test_view_size_and_intensity_augmentation() -> None:
    assert view_size((128, 128), 8) == (96, 96)
    assert view_size((8, 8), 8) == (8, 8)  # the smallest patch still gives (whole-patch) views
    rng = np.random.default_rng(0)
    image = rng.random((4, 1, 32, 32)).astype(np.float32)
    v = make_views(image, rng, multiple=4)
    index = torch.from_numpy(correspondence(v.g1, v.g2))
    out, mask = align(torch.from_numpy(v.x2), index)
    assert not torch.allclose(out[mask.expand_as(out)], torch.from_numpy(v.x1)[mask.expand_as(out)], atol=1e-3)


def test_pool_regions_weighted_means() -> None:
    feat = torch.arange(8.0).reshape(1, 1, 2, 4)
    weights = torch.zeros(1, 2, 2, 4)
    weights[0, 0, 0] = 1.0
    weights[0, 1, :, :2] = 0.5
    means, mass = pool_regions(feat, weights)
    assert means[0, 0, 0] == pytest.approx(1.5) and means[0, 1, 0] == pytest.approx(2.5)
    assert mass.tolist() == [[4.0, 2.0]]


def test_grouped_sampling_gives_registered_neighbouring_slices(em_small) -> None:
    raw, _ = em_small
    vol = as_volume(raw)
    sampler = PatchSampler([vol], fit_normalization([vol]), (32, 32), seed=0)
    batch = sampler.sample(8, group=2, max_dz=2)
    o = batch["origin"]
    for a in range(0, 8, 2):
        assert (o[a, 1:] == o[a + 1, 1:]).all() and 1 <= abs(o[a, 0] - o[a + 1, 0]) <= 2
    for b in range(8):  # origin says where the patch came from
        z, y, x = o[b]
        expect = fit_normalization([vol]).apply(vol.read(int(z), slice(y, y + 32), slice(x, x + 32)))[:, 0]
        assert np.allclose(batch["image"][b], expect)
    assert batch["zpos"][0] == pytest.approx(o[0, 0] / 3)
    plain = PatchSampler([vol], fit_normalization([vol]), (32, 32), seed=0).sample(8)
    assert plain["origin"].shape == (8, 3)


@pytest.mark.parametrize("method", ["regcon", "lrc", "glrp"])
def test_heads_train_in_the_one_loop(em_small, method: str) -> None:
    raw, _ = em_small
    job = pretrain_job([raw], method, patch_size=32, base=4, depth=2, batch_size=2, steps=2, seed=0,
                       device="cpu", checkpoint_every=0)
    assert not list(job.task.parameters())  # heads are built by bind(), when the loop starts
    bundle = job.run()
    heads = dict(job.task.named_parameters())
    assert heads and all(p.grad is not None for p in heads.values())
    assert "region_head.weight" in bundle["training"]["task_state"] or method != "regcon"
    # a resumed run restores the heads from the bundle's training state
    job2 = pretrain_job([raw], method, patch_size=32, base=4, depth=2, batch_size=2, steps=3, seed=0,
                        device="cpu", checkpoint_every=0, resume=bundle)
    job2.run()
    assert job2.task.state_dict().keys() == job.task.state_dict().keys()


def test_get_pretext_defaults_and_bad_parameters() -> None:
    from napari_regcon.core.errors import RegconError
    for name in ("regcon", "lrc", "glrp"):
        task = get_pretext(name)
        assert task.transfer == ("encoder.", "upsample.", "decoder.") and task.kind == "pretrained"
        assert get_pretext(name, **task.params()).params() == task.params()
    with pytest.raises(RegconError, match="Bad parameter"):
        get_pretext("lrc", nonsense=1)
    with pytest.raises(RegconError, match="temperature"):
        get_pretext("regcon", tau=0)
