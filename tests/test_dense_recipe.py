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
    shifted, _ = run_predict(bundle, raw[1:2])
    plain, _ = run_predict(no_offset, raw[1:2])
    assert (np.asarray(shifted) == 2).sum() <= (np.asarray(plain) == 2).sum()
