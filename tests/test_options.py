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


def test_defaults_follow_the_model_dimensionality(vessel_thin) -> None:
    """A fresh 3D model gets the 3D defaults (8x128x128 patches, batch 4, width 8), cut to the stack;
    2D keeps 128², batch 8, width 16; an explicit value wins in both."""
    import numpy as np

    from napari_regcon.core.options import DEFAULT_BASE, DEFAULT_BATCH
    from napari_regcon.core.sampling import DEFAULT_PATCH, default_patch_size
    from napari_regcon.core.workflows import finetune_job

    assert (DEFAULT_PATCH[3], DEFAULT_BATCH[3], DEFAULT_BASE[3]) == ((8, 128, 128), 4, 8)
    assert (DEFAULT_PATCH[2], DEFAULT_BATCH[2], DEFAULT_BASE[2]) == ((128, 128), 8, 16)
    assert default_patch_size((25, 512, 512), 3) == (8, 128, 128)
    assert default_patch_size((25, 512, 512), 2) == (128, 128)
    raw = np.repeat(vessel_thin[0], 4, axis=0)  # 12 planes of 96x96
    labels = np.zeros(raw.shape, np.uint8)
    labels[5, 40:50, 40:50], labels[5, 0:10, 0:10] = 2, 1
    job3 = finetune_job(raw, labels, ndim=3, checkpoint_every=0)
    assert (job3.config.batch_size, job3.model.config.base, job3.info["patch"]) == (4, 8, (8, 96, 96))
    job2 = finetune_job(raw, labels, ndim=2, checkpoint_every=0)
    assert (job2.config.batch_size, job2.model.config.base, job2.info["patch"]) == (8, 16, (96, 96))
    mine = finetune_job(raw, labels, ndim=3, batch_size=2, base=4, patch_size="4,32,32", checkpoint_every=0)
    assert (mine.config.batch_size, mine.model.config.base, mine.info["patch"]) == (2, 4, (4, 32, 32))
