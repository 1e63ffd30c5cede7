"""A bundle written by napari-regcon 0.1.0 still loads and predicts the same labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_regcon.core.checkpoint import load_bundle
from napari_regcon.core.drive import drive
from napari_regcon.core.workflows import predict_arrays

DATA = Path(__file__).parent / "data"


def test_0_1_0_bundle_loads_and_predicts_the_same() -> None:
    bundle = load_bundle(DATA / "bundle_0.1.0.pt")
    assert bundle["software"]["napari-regcon"] == "0.1.0"
    img = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    labels, _ = drive(predict_arrays(bundle, img, device="cpu", precision="fp32"))
    expected = np.load(DATA / "bundle_0.1.0_labels.npy")
    assert labels.dtype == expected.dtype
    np.testing.assert_array_equal(labels, expected)
