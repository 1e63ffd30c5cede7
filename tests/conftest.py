"""Shared fixtures: small real EM crops from the bundled sample, a tiny model config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_regcon.sample_data import load_sample

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def sample() -> tuple[np.ndarray, np.ndarray]:
    """The bundled ISBI crop: raw (10x384x384 uint8) and membranes (1 = membrane)."""
    return load_sample()


@pytest.fixture(scope="session")
def em_small(sample) -> tuple[np.ndarray, np.ndarray]:
    """A 4x128x128 real EM crop and its truth as class values (1 = cell interior, 2 = membrane)."""
    raw, mem = sample
    return raw[:4, :128, :128].copy(), (mem[:4, :128, :128] + 1).astype(np.uint8)


@pytest.fixture
def tiny() -> dict:
    """Tiny network settings so training tests take seconds."""
    return {"base": 4, "depth": 2, "batch_size": 2, "patch_size": 32}
