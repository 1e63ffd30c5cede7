"""The simulated annotator of benchmarks/annotation_loop.py paints where the prediction is wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from annotation_loop import correction_strokes  # noqa: E402


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    truth = np.ones((96, 96), np.uint8)
    truth[:, 40:46] = 2  # a membrane
    pred = truth.copy()
    pred[60:80, 10:30] = 2  # a wrong blob: background predicted as membrane
    labels = np.zeros_like(truth)
    labels[5:8, 5:30] = 1  # the user's first stroke
    return truth, pred, labels, labels > 0


def test_correction_strokes_land_in_the_missed_region_with_the_true_class() -> None:
    truth, pred, labels, painted = _scene()
    before = painted.copy()
    out = correction_strokes(truth, pred, labels, painted, budget=400, radius={1: 2, 2: 1},
                             rng=np.random.default_rng(0))
    new = (out != labels)
    assert new.any()
    assert (out[new] == truth[new]).all()  # always the true class
    assert new[60:80, 10:30].sum() == new.sum()  # only inside the wrong blob
    assert (out[before] == labels[before]).all()  # the user's strokes are kept
    assert painted[new].all() and painted.sum() == before.sum() + new.sum()


def test_accept_mode_takes_the_prediction_then_paints_over_its_errors() -> None:
    truth, pred, labels, painted = _scene()
    out = correction_strokes(truth, pred, labels, painted, budget=400, radius={1: 2, 2: 1},
                             rng=np.random.default_rng(0), accept=True)
    assert (out > 0).all()  # every pixel of the plane is now labelled
    assert (out[~painted] == pred[~painted]).all()  # accepted where the annotator did not paint
    blob = np.zeros_like(painted)
    blob[60:80, 10:30] = True
    assert painted[blob].any() and not painted[~blob & (labels == 0)].any()


def test_the_plain_unet_baseline_learns_what_its_labels_say() -> None:
    """benchmarks/plain_unet.py's reference network is a working U-Net: on a bright-square / dark-background
    stack with one labeled plane it segments a held-out plane (a broken baseline would flatter ours)."""
    import torch
    from annotation_loop import Dataset
    from plain_unet import make_labels, plain_fit_predict

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    truth = np.ones((3, 128, 128), np.uint8)
    for z in range(3):
        y, x = rng.integers(10, 70, 2)
        truth[z, y:y + 40, x:x + 40] = 2
    image = (truth * 80 + rng.normal(0, 10, truth.shape)).clip(0, 255).astype(np.uint8)
    data = Dataset("toy", 2, image[:2], truth[:2], [0], {"held out": (image[2:], truth[2:])}, 2, {1: 2, 2: 2},
                   [], "128", 4)
    labels = make_labels(data, "dense:0", 0)
    assert labels[0].min() == 1 and labels[1].max() == 0
    preds, _ = plain_fit_predict(data, labels, seed=0, steps=30, batch=4, base=8)
    from napari_regcon.core.metrics import dice
    assert dice(preds["held out"], truth[2:], 2) > 0.9
