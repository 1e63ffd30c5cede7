"""The typed bundle: a lossless round trip of the plain-data form, checks of the nested parts, the rules it implies."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_regcon.core.bundle import Bundle, Classes, DataInfo, SemiSupervisedInfo, as_bundle
from napari_regcon.core.checkpoint import load_bundle, make_bundle, save_bundle
from napari_regcon.core.errors import RegconError
from napari_regcon.core.models import UNetConfig, build_model

DATA = Path(__file__).parent / "data"


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _bundle(values=(1, 2), in_channels: int = 1) -> dict:
    cfg = UNetConfig(base=4, depth=2, in_channels=in_channels, out_channels=len(values))
    return make_bundle("segmentation", cfg.to_dict(), build_model(cfg).state_dict(),
                       {"low": [0.0] * in_channels, "high": [1.0] * in_channels},
                       classes={"values": list(values), "names": [f"c{v}" for v in values]},
                       data={"patch_size": [32, 32], "channel_axis": 0 if in_channels > 1 else None, "sources": []})


def test_0_1_0_bundle_round_trips_without_loss() -> None:
    raw = torch.load(DATA / "bundle_0.1.0.pt", weights_only=True)
    typed = Bundle.from_dict(copy.deepcopy(raw))
    assert typed.kind == "segmentation" and typed.model.ndim == 2 and typed.classes.values == [1, 2]
    assert typed.training.resumable and typed.training.step == 2
    assert _same(typed.to_dict(), raw)


def test_unknown_keys_and_semi_supervised_info_survive(tmp_path) -> None:
    b = _bundle()
    b["training"]["bench_seconds"] = 1.5  # what the benchmarks add
    b["pretext"] = {"method": "mim", "finetune": {"method": "semisupervised", "params": {}, "unlabeled_images": 1}}
    b["notes"] = "kept"
    typed = as_bundle(load_bundle(save_bundle(b, tmp_path / "m.pt")))
    assert typed.semi_supervised == SemiSupervisedInfo("semisupervised", {}, 1)
    assert typed.pretext.method == "mim" and "finetune" not in typed.pretext.extra
    out = typed.to_dict()
    assert out["training"]["bench_seconds"] == 1.5 and out["notes"] == "kept"
    assert out["pretext"]["finetune"]["unlabeled_images"] == 1


def test_rules_the_bundle_implies() -> None:
    typed = as_bundle(_bundle())
    assert typed.label_dtype == np.uint8 and typed.channel_axis() is None and typed.channel_axis(2) == 2
    assert as_bundle(_bundle(values=(1, 300))).label_dtype == np.uint16
    multi = as_bundle(_bundle(in_channels=2))
    assert multi.channel_axis() == 0 and multi.channel_axis(-1) == -1  # the bundle's axis only when none is given
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert typed.build_model()(x).shape == (1, 2, 32, 32)
    assert Classes([1, 2], ["a"]).name_of(2) == "class 2" and DataInfo().to_dict()["channel_axis"] is None


@pytest.mark.parametrize("damage, match", [
    (lambda b: b.update(classes={"values": "12", "names": []}), "classes.values is not a list"),
    (lambda b: b["classes"].update(values=[1, 2, 3], names=["a", "b", "c"]), "3 label values for a network with 2 outputs"),
    (lambda b: b["classes"].update(names=["a"]), "1 class names for 2 label values"),
    (lambda b: b.update(normalization={"low": [0.0, 0.0], "high": [1.0, 1.0]}), "normalisation is for 2 channel"),
    (lambda b: b.update(normalization={}), "no intensity normalisation"),
    (lambda b: b.update(data=[1, 2]), "data is not a table"),
    (lambda b: b["data"].update(patch_size="big"), "data.patch_size is not a list"),
    (lambda b: b.update(training={"step": "two"}), "training.step is not an integer"),
    (lambda b: b.update(model={"ndim": 5}), "model is not a valid U-Net configuration"),
    (lambda b: b.update(history={"step": [1, 2], "loss": [0.5]}), "2 steps but 1 losses"),
])
def test_damaged_nested_parts_are_refused_on_load(tmp_path, damage, match) -> None:
    b = _bundle()
    damage(b)
    path = tmp_path / "damaged.pt"
    torch.save(b, path)
    with pytest.raises(RegconError, match=match) as err:
        load_bundle(path)
    assert str(path) in str(err.value)
