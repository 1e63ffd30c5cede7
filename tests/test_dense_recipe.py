"""The recipe for full masks: trained with the classes weighed alike, it adds half of the labels' log
class prior back at prediction only, through the bundle's ``logit_offset``, so training continues
from the weights as they were learned; a correction round on full masks uses ``refine``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_regcon.core.bundle import Bundle, as_bundle
from napari_regcon.core.errors import RegconError
from napari_regcon.core.labels import build_labelset
from napari_regcon.core.recipes import choose_recipe
from napari_regcon.core.workflows import finetune_job, run_predict


def test_offset_is_half_the_log_prior_scaled_by_the_unlabeled_planes() -> None:
    """A class on 10 % of the labeled pixels, one on 90 %, one plane of four labeled: the offsets differ
    by half of log 9 times the 3/4 of the planes left unlabeled; with every plane labeled there is none."""
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[0] = 1
    labels[0, 0] = 2  # one row of ten: 10 %
    ls = build_labelset(labels, labels.shape, dense=False)
    np.testing.assert_allclose(ls.shares, [0.9, 0.1])
    assert ls.plane_share == pytest.approx(0.25)
    dense = choose_recipe("dense", ls)
    offset = dense.logit_offset(ls)
    assert offset is not None and abs(sum(offset)) < 1e-9  # centred
    assert offset[0] - offset[1] == pytest.approx(0.5 * 0.75 * np.log(9.0))
    assert choose_recipe("balanced", ls).logit_offset(ls) is None  # for other stacks: no prior at all
    # every plane labeled: the model can only be meant for other stacks, so no prior is added back
    full = build_labelset(np.tile(labels[:1], (4, 1, 1)), labels.shape)
    assert full.plane_share == 1.0 and dense.logit_offset(full) is None


def test_offset_applies_at_prediction_and_not_to_a_continued_training(em_small, tiny) -> None:
    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    bundle = as_bundle(finetune_job(raw, labels, steps=2, seed=0, **tiny).run())
    offset = bundle.classes.logit_offset
    assert offset is not None and offset[0] > offset[1]  # membrane is the rarer class of the labels
    raw_bias = bundle.state_dict["head.bias"]
    built = bundle.build_model()
    np.testing.assert_allclose(built.head.bias.detach().numpy(), raw_bias.numpy() + np.array(offset), rtol=1e-6)
    # the offset survives a save/load round trip and is checked against the classes
    again = Bundle.from_dict(bundle.to_dict())
    assert again.classes.logit_offset == pytest.approx(offset)
    bad = bundle.to_dict()
    bad["classes"]["logit_offset"] = [0.0]
    with pytest.raises(RegconError, match="logit offsets"):
        Bundle.from_dict(bad).validate()
    # a correction round starts from the learned weights, not from the shifted ones, and on full masks
    # (an accepted slice) trains with plain cross-entropy: the labels are mostly the model's own answer
    job = finetune_job(raw, labels, init=bundle, steps=1, seed=0, **tiny)
    torch.testing.assert_close(job.model.head.bias.detach().cpu(), raw_bias)
    assert job.info["recipe"].name == "refine" and not job.info["recipe"].balanced
    assert as_bundle(job.run()).classes.logit_offset is None
    # and the shift moves the prediction toward the labels' majority class
    no_offset = bundle.to_dict()
    no_offset["classes"]["logit_offset"] = [0.0, 0.0]
    shifted, _ = run_predict(bundle, raw[1:2], class_prior="on")
    plain, _ = run_predict(no_offset, raw[1:2], class_prior="on")
    assert (np.asarray(shifted) == 2).sum() <= (np.asarray(plain) == 2).sum()


def test_the_prior_is_added_on_the_labeled_image_only(em_small, tiny) -> None:
    """The labels' class shares say something about the unlabeled planes of the labeled stack, nothing
    about another stack (VesselNN: vessels on 12 % of one stack, 36 % of another). So ``auto`` adds the
    offset when predicting the image the model was trained on, recognised by its fingerprint even as
    another dtype, and not on another image; ``on``/``off`` force it; the live preview's slab counts as
    the labeled image."""
    from napari_regcon._widgets.jobs import predict_plane
    from napari_regcon.core.predict import class_prior_applies
    from napari_regcon.core.volume import as_volume, fingerprint

    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    bundle = as_bundle(finetune_job(raw, labels, steps=2, seed=0, **tiny).run())
    assert bundle.classes.offset_for == fingerprint(as_volume(raw))
    assert Bundle.from_dict(bundle.to_dict()).classes.offset_for == bundle.classes.offset_for
    other = np.ascontiguousarray(raw[::-1])
    assert fingerprint(as_volume(raw.astype(np.float32))) == fingerprint(as_volume(raw))
    assert class_prior_applies(bundle, as_volume(raw))
    assert not class_prior_applies(bundle, as_volume(other))
    assert class_prior_applies(bundle, as_volume(other), "on") and not class_prior_applies(bundle, as_volume(raw), "off")
    _, probs_same = run_predict(bundle, raw, probabilities=True)
    _, probs_on = run_predict(bundle, raw, probabilities=True, class_prior="on")
    _, probs_off = run_predict(bundle, raw, probabilities=True, class_prior="off")
    np.testing.assert_allclose(np.asarray(probs_same), np.asarray(probs_on))
    assert not np.allclose(np.asarray(probs_same), np.asarray(probs_off))
    _, probs_other = run_predict(bundle, other, probabilities=True)
    _, probs_other_off = run_predict(bundle, other, probabilities=True, class_prior="off")
    np.testing.assert_allclose(np.asarray(probs_other), np.asarray(probs_other_off))
    z, preview = predict_plane(bundle.to_dict(), raw, None, 1)  # a one-plane slab of the labeled stack
    full, _ = run_predict(bundle, raw, tile=raw.shape[-2:], overlap=0.0)
    assert z == 1 and np.array_equal(preview, np.asarray(full)[1])
    # a bundle of before the fingerprint adds its offset everywhere, as it did
    old = bundle.to_dict()
    del old["classes"]["offset_for"]
    assert class_prior_applies(Bundle.from_dict(old), as_volume(other))
    with pytest.raises(RegconError, match="class_prior"):
        run_predict(bundle, raw, class_prior="maybe")
