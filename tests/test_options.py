"""Training options declared once: the CLI, the widgets and the demo fill the same dataclasses."""

from __future__ import annotations

import pytest

from napari_regcon.cli import build_parser
from napari_regcon.core.errors import RegconError
from napari_regcon.core.options import (
    FinetuneOptions,
    PretrainOptions,
    fill,
    parse_params,
    with_fields,
)
from napari_regcon.core.pretext import PRETEXTS, get_pretext, with_voxel_size
from napari_regcon.core.pretext.base import Task


def test_cli_defaults_are_the_options_defaults() -> None:
    parser = build_parser()
    ft = parser.parse_args(["finetune", "--image", "i.tif", "--labels", "l.tif", "--out", "m.pt"])
    assert fill(FinetuneOptions, ft, class_names=None) == FinetuneOptions()
    pre = parser.parse_args(["pretrain", "i.tif", "--out", "p.pt"])
    assert fill(PretrainOptions, pre, method_params={}) == PretrainOptions()
    ft = parser.parse_args(["finetune", "--image", "i.tif", "--labels", "l.tif", "--out", "m.pt", "--steps", "7",
                            "--dense", "--recipe", "strokes", "--precision", "fp32"])
    o = fill(FinetuneOptions, ft, class_names=["a", "b"])
    assert (o.steps, o.dense, o.recipe, o.precision, o.class_names) == (7, True, "strokes", "fp32", ["a", "b"])


def test_with_fields() -> None:
    assert with_fields(FinetuneOptions, None, steps=3).steps == 3
    base = FinetuneOptions(lr=0.1)
    assert with_fields(FinetuneOptions, base, steps=3) == FinetuneOptions(lr=0.1, steps=3) and base.steps == 400
    with pytest.raises(TypeError):
        with_fields(FinetuneOptions, None, stepz=3)


def test_one_key_value_parser_for_cli_and_widget() -> None:
    cli = parse_params(["ratio=0.5", "patch=[4,16,16]", "mask=intensity", "max-dz=2"], "--param")
    assert cli == parse_params("ratio=0.5, patch=[4,16,16]; mask=intensity, max-dz=2") == {
        "ratio": 0.5, "patch": [4, 16, 16], "mask": "intensity", "max_dz": 2}
    with pytest.raises(RegconError, match="--param expects KEY=VALUE"):
        parse_params(["ratio"], "--param")
    with pytest.raises(RegconError, match="key=value"):
        parse_params("ratio 0.5")


def test_voxel_size_rule() -> None:
    assert with_voxel_size("mim", {}, 3, (4.0, 1.0, 1.0)) == {"voxel_size": [4.0, 1.0, 1.0]}
    assert with_voxel_size("mim", {"voxel_size": [1, 1, 1]}, 3, (4.0, 1.0, 1.0)) == {"voxel_size": [1, 1, 1]}
    assert with_voxel_size("mim", {}, 2, (4.0, 1.0, 1.0)) == {}
    assert with_voxel_size("mim", {}, 3, (1.0, 1.0)) == {}
    assert with_voxel_size("regcon", {}, 3, (4.0, 1.0, 1.0)) == {}


def test_task_declares_its_optional_hooks() -> None:
    assert Task().sample_options == {} and Task().bind(None) is None  # type: ignore[arg-type]
    assert get_pretext("mim").weight_decay == 0.05
    assert all(cls.weight_decay == 1e-4 for name, cls in PRETEXTS.items() if name != "mim")
    assert get_pretext("glrp").sample_options  # neighbouring slices
