"""The bundled sample: a crop of the ISBI 2012 ssTEM stack with membrane ground truth.

Shipped inside the package (no downloads): used by ``napari-regcon demo``, by the tests and as
napari sample data (File > Open Sample > napari-regcon).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np

VOXEL_SIZE_NM = (50.0, 4.0, 4.0)


def sample_paths() -> tuple[Any, Any]:
    """Paths (importlib resources) of the raw stack and the membrane mask."""
    root = files("napari_regcon") / "sample"
    return root / "isbi2012_em.tif", root / "isbi2012_membranes.tif"


def load_sample() -> tuple[np.ndarray, np.ndarray]:
    """The EM crop (10x384x384 uint8) and its membrane mask (1 = membrane, 0 = cell interior)."""
    import tifffile

    raw_path, gt_path = sample_paths()
    with raw_path.open("rb") as fh:
        raw = tifffile.imread(fh)
    with gt_path.open("rb") as fh:
        gt = tifffile.imread(fh)
    return raw, gt


def make_sample_data() -> list[tuple]:
    """npe2 sample-data provider: the EM stack and its ground-truth membranes."""
    raw, gt = load_sample()
    return [
        (raw, {"name": "ISBI 2012 EM", "scale": VOXEL_SIZE_NM}, "image"),
        (gt.astype(np.uint8), {"name": "membranes (ground truth)", "scale": VOXEL_SIZE_NM, "opacity": 0.5}, "labels"),
    ]
