"""The one rule of the training forms (issue 15): data type, Model, patch and network size follow the
chosen data type and *Start from* model, and never contradict each other. No widget needed."""

from __future__ import annotations

from napari_regcon._widgets.presets import (
    PRESETS,
    ModelChoice,
    model_fields,
    patch_text,
    preset_for,
)
from napari_regcon.core.bundle import Bundle, DataInfo, cpu_weights
from napari_regcon.core.models import UNetConfig, build_model

EM = preset_for(2)
TWO_PHOTON = preset_for(3)


def _bundle(ndim: int, patch: list[int] | None, base: int = 6, depth: int = 1, channels: int = 1) -> dict:
    cfg = UNetConfig(ndim=ndim, in_channels=channels, out_channels=channels, base=base, depth=depth)
    return Bundle("pretrained", cfg, cpu_weights(build_model(cfg).state_dict()), None,
                  data=DataInfo(patch)).to_dict()


def test_without_a_start_model_the_fields_are_the_presets() -> None:
    for i, p in enumerate(PRESETS):
        f = model_fields(i)
        assert (f.preset, f.ndim, f.patch, f.steps, f.batch) == (i, p.ndim, p.patch, p.finetune_steps, p.batch)
        assert not f.locked and f.base is None and f.depth is None
        assert model_fields(i, pretrain=True).steps == p.pretrain_steps


def test_a_start_model_fixes_the_fields_and_says_why() -> None:
    b3 = _bundle(3, [8, 64, 64], base=6, depth=1, channels=2)
    b2 = _bundle(2, [48, 48], base=8, depth=2)
    for chosen in range(len(PRESETS)):
        f = model_fields(chosen, b3)
        assert (f.preset, f.ndim, f.patch, f.base, f.depth) == (TWO_PHOTON, 3, "8,64,64", 6, 1)
        assert f.locked and f.reason == ("Set by the chosen model: 3D, 2 channels, network width 6, depth 1; "
                                         "it was trained on 8×64×64 patches.")
        assert (f.steps, f.batch) == (PRESETS[TWO_PHOTON].finetune_steps, PRESETS[TWO_PHOTON].batch)
        f = model_fields(chosen, b2)
        assert (f.preset, f.ndim, f.patch, f.base, f.depth) == (EM, 2, "48", 8, 2)
        assert "2D, 1 channel," in f.reason and "48×48" in f.reason
        assert PRESETS[f.preset].ndim == f.ndim  # the data type shown never contradicts the model
    # an old bundle without a patch: the patch of the data type shown
    f = model_fields(EM, _bundle(3, None))
    assert f.patch == PRESETS[TWO_PHOTON].patch and f.locked and "patches" not in f.reason


def test_the_choice_remembers_the_users_data_type() -> None:
    choice = ModelChoice(preset=EM)
    choice.start = _bundle(3, [4, 32, 32])
    assert choice.fields().preset == TWO_PHOTON
    choice.choose_ndim(2)  # Model is locked while a model is chosen: no effect
    assert choice.fields().ndim == 3
    choice.start = None  # back to random initialisation: the user's data type again
    assert choice.fields() == model_fields(EM)
    choice.choose_ndim(3)  # Model: 3D by hand picks the 3D data type
    assert choice.preset == TWO_PHOTON and choice.fields().ndim == 3
    choice.choose_ndim(3)
    assert choice.preset == TWO_PHOTON


def test_patch_text_is_what_the_field_reads() -> None:
    assert patch_text([128, 128]) == "128" and patch_text([64, 128]) == "64,128"
    assert patch_text([4, 32, 32]) == "4,32,32"
