"""Dice / IoU per class against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from napari_regcon.core.errors import RegconError
from napari_regcon.core.metrics import dice, scores


def test_scores_hand_computed() -> None:
    truth = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    pred = np.array([[1, 2, 2, 2], [1, 1, 1, 2]])
    s = scores(pred, truth)
    # class 2: tp 3, fp 1, fn 1 -> dice 6/8, iou 3/5
    assert s["classes"]["2"]["dice"] == pytest.approx(0.75)
    assert s["classes"]["2"]["iou"] == pytest.approx(0.6)
    assert s["classes"]["1"]["dice"] == pytest.approx(0.75)
    assert dice(pred, truth, 2) == pytest.approx(0.75)


def test_ignore_zero_and_stacks() -> None:
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[:, 0] = 2
    pred = np.full((2, 4, 4), 2, np.uint8)
    assert scores(pred, truth, ignore_zero=True)["classes"]["2"]["dice"] == 1.0
    assert scores(pred, truth)["classes"]["2"]["dice"] < 1.0


def test_shape_mismatch() -> None:
    with pytest.raises(RegconError, match="must match"):
        scores(np.zeros((2, 2)), np.zeros((3, 2)))
