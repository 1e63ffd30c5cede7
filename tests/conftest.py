"""Shared fixtures: small real EM crops from the bundled sample, a tiny model config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_regcon.sample_data import load_sample

torch.set_num_threads(2)

#: The real two-photon stacks (ImageJ TIFFs with their voxel size), when this checkout has them.
VESSEL_DIR = Path(os.environ.get("REGCON_VESSELNN", Path(__file__).resolve().parents[2] / "shared/data/vesselnn_2pm"))


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


@pytest.fixture(scope="session")
def vessel_dir() -> Path:
    """The VesselNN two-photon stacks (raw_NN.tif / labels_NN.tif, 5 x 0.994 x 0.994 µm voxels)."""
    if not (VESSEL_DIR / "raw_01.tif").exists():
        pytest.skip(f"the VesselNN stacks are not in {VESSEL_DIR}")
    return VESSEL_DIR


@pytest.fixture(scope="session")
def vessel_thin(vessel_dir) -> tuple[np.ndarray, np.ndarray]:
    """A 3-plane 96x96 crop of VesselNN stack 01 and its labels as class values (1 = background, 2 = vessel)."""
    import tifffile
    raw = tifffile.imread(vessel_dir / "raw_01.tif")[4:7, 200:296, 200:296]
    labels = tifffile.imread(vessel_dir / "labels_01.tif")[4:7, 200:296, 200:296]
    return raw.copy(), (labels + 1).astype(np.uint8)
