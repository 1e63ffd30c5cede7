"""Prediction to files: zarr outputs resume after an interruption, TIFF outputs are all-or-nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_regcon.core.checkpoint import make_bundle
from napari_regcon.core.models import UNetConfig, build_model
from napari_regcon.core.outputs import (
    PROGRESS_KEY,
    PredictionStopped,
    partial_path,
    predict_to_files,
)


def _bundle(ndim: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    cfg = UNetConfig(ndim=ndim, base=4, depth=2, out_channels=2, pool_z=[True, False] if ndim == 3 else [])
    return make_bundle("segmentation", cfg.to_dict(), build_model(cfg).state_dict(), {"low": [0.0], "high": [255.0]},
                       classes={"values": [1, 2], "names": ["a", "b"]})


def _run(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def _stop_after(n_events: int):
    count = {"n": 0}

    def stop() -> bool:
        count["n"] += 1
        return count["n"] > n_events
    return stop


@pytest.mark.parametrize("ndim, tile", [(2, (32, 32)), (3, (4, 32, 32))])
def test_zarr_prediction_resumes_where_it_stopped(tmp_path, em_small, ndim, tile) -> None:
    raw, _ = em_small
    raw = raw[:, :64, :96] if ndim == 2 else np.concatenate([raw, raw[::-1], raw])[:, :64, :64]  # 12 planes
    bundle = _bundle(ndim)
    _, ref_summary = _run(predict_to_files(bundle, raw, tmp_path / "ref.zarr", tmp_path / "ref_p.zarr", tile=tile))
    ref = zarr.open(str(tmp_path / "ref.zarr"), mode="r")[...]
    ref_p = zarr.open(str(tmp_path / "ref_p.zarr"), mode="r")[...]
    assert ref_summary["complete"] and set(np.unique(ref)) <= {1, 2}

    out, probs = tmp_path / "out.zarr", tmp_path / "p.zarr"
    _, summary = _run(predict_to_files(bundle, raw, out, probs, tile=tile, should_stop=_stop_after(7)))
    assert not summary["complete"] and not out.exists()
    part = zarr.open(str(partial_path(out)), mode="r")
    done = part.attrs[PROGRESS_KEY]["done"]
    assert len(done) >= 1
    events, summary = _run(predict_to_files(bundle, raw, out, probs, tile=tile))
    assert summary == {"resumed_units": len(done), "complete": True}
    assert events[0].done > 1  # the finished units were not recomputed
    assert not partial_path(out).exists() and not partial_path(probs).exists()
    np.testing.assert_array_equal(zarr.open(str(out), mode="r")[...], ref)
    np.testing.assert_allclose(zarr.open(str(probs), mode="r")[...], ref_p, atol=1e-6)


def test_partial_from_another_model_is_discarded(tmp_path, em_small) -> None:
    raw = em_small[0][:, :64, :64]
    out = tmp_path / "o.zarr"
    _run(predict_to_files(_bundle(2, seed=0), raw, out, tile=(32, 32), should_stop=_stop_after(5)))
    assert partial_path(out).exists()
    _, summary = _run(predict_to_files(_bundle(2, seed=1), raw, out, tile=(32, 32)))
    assert summary["resumed_units"] == 0 and out.exists()


def test_stopped_tiff_prediction_leaves_nothing(tmp_path, em_small) -> None:
    raw = em_small[0][:, :64, :64]
    with pytest.raises(PredictionStopped):
        _run(predict_to_files(_bundle(2), raw, tmp_path / "o.tif", tmp_path / "p.tif", tile=(32, 32),
                              should_stop=_stop_after(3)))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_keeps_the_partial_store_resumable(tmp_path, em_small, monkeypatch) -> None:
    """ENOSPC in the middle of a zarr prediction: one clear error, the store stays .partial and resumes."""
    import errno

    from napari_regcon.core.errors import RegconError

    raw = em_small[0][:, :64, :64]
    bundle = _bundle(2)
    _run(predict_to_files(bundle, raw, tmp_path / "ref.zarr", tile=(32, 32)))
    ref = zarr.open(str(tmp_path / "ref.zarr"), mode="r")[...]

    original, writes = zarr.Array.__setitem__, {"n": 0}

    def filling_disk(self, key, value):
        writes["n"] += 1
        if writes["n"] > 7:  # the disk fills up during the third plane (3 band writes per plane)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", filling_disk)
    out = tmp_path / "o.zarr"
    with pytest.raises(RegconError, match="disk filled up.*resumes it"):
        _run(predict_to_files(bundle, raw, out, tile=(32, 32)))
    monkeypatch.setattr(zarr.Array, "__setitem__", original)
    assert not out.exists()
    info = zarr.open(str(partial_path(out)), mode="r").attrs[PROGRESS_KEY]
    assert info["complete"] is False and len(info["done"]) >= 1  # marked incomplete, finished part kept
    _, summary = _run(predict_to_files(bundle, raw, out, tile=(32, 32)))
    assert summary == {"resumed_units": len(info["done"]), "complete": True}
    np.testing.assert_array_equal(zarr.open(str(out), mode="r")[...], ref)
