"""Two-photon and other 3D stacks in the dock widget (issue 13): the 3D preset on a thin stack,
errors in the widget's own words, the plugin's layers over a multi-channel image, and the voxel
size from the plugin's reader. Real short runs on real crops; run under ``xvfb-run -a``."""

from __future__ import annotations

import pytest
from widget_utils import Notes, make_widget, run

from napari_regcon._widgets.options import PRESETS

pytestmark = pytest.mark.gui

TWO_PHOTON = next(i for i, p in enumerate(PRESETS) if p.ndim == 3)


def _preset_3d(section, steps: int = 2) -> None:
    """The two-photon preset as a user picks it, with a tiny network so that the run takes seconds."""
    section.preset.setCurrentIndex(TWO_PHOTON)
    assert section.options.values()["ndim"] == 3
    section.options.steps.setValue(steps)
    section.network.base.setValue(4)
    section.network.depth.setValue(2)


def test_two_photon_preset_trains_on_a_three_plane_stack(make_napari_viewer, qtbot, vessel_thin):
    raw, truth = vessel_thin  # 3 planes of a real two-photon stack, 96x96
    viewer, w = make_widget(make_napari_viewer, raw, name="vessels", scale=(5.0, 0.994, 0.994))
    notes = Notes()
    note = "The patch size 16x64x64 is larger than the stack (3x96x96), so training uses 3x64x64."

    _preset_3d(w.pretrain)
    assert w.pretrain.options.patch.text() == "16,64,64"
    run(qtbot, w.pretrain)
    assert not notes.errors(), notes.errors()
    pre = w.session.latest("pretrained")
    assert pre is not None and pre.bundle["data"]["patch_size"] == [3, 64, 64]
    assert note in w.pretrain.panel.label.text()  # said in the section's status line, and kept there

    ft = w.finetune
    _preset_3d(ft)
    lab = ft.create_labels_layer()
    lab.data[1] = truth[1]  # the middle plane painted
    ft.init.select(pre)
    assert ft.options.patch.text() == "3,64,64"  # a pretrained model brings its patch ...
    ft.options.patch.setText("16,64,64")  # ... and the preset's is clipped again
    run(qtbot, ft)
    assert not notes.errors(), notes.errors()
    seg = w.session.latest("segmentation")
    assert seg is not None and seg.bundle["model"]["ndim"] == 3 and seg.bundle["data"]["patch_size"] == [3, 64, 64]
    assert note in ft.panel.label.text()


def test_errors_name_the_widget_fields(make_napari_viewer, qtbot, em_small):
    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw[0, :48, :48])  # a small 2D image
    notes = Notes()
    ft = w.finetune
    lab = ft.create_labels_layer()
    lab.data[:] = truth[0, :48, :48]
    _preset_3d(ft)
    run(qtbot, ft)
    msg = notes.errors()[-1]
    assert msg.startswith("A 3D model needs a ZYX stack") and "Model: 2D" in msg and "--" not in msg, msg
    # a network too deep for the image: the field, not the flag
    ft.preset.setCurrentIndex(0)
    ft.network.depth.setValue(6)
    ft.options.patch.setText("1000")
    ft.options.steps.setValue(1)
    run(qtbot, ft)
    assert "too small for this network" in notes.errors()[-1] and "--" not in notes.errors()[-1]


def test_widget_wording_of_core_messages():
    """Every core message that names a flag the widgets have reads as the widget's field."""
    from napari_regcon._widgets.wording import widget_text

    cases = {
        "The patch size (512, 512) is larger than the image (4x128x128); choose a smaller --patch-size.":
            "choose a smaller Patch size.",
        "--channel-axis 5 is out of range for an image of shape (4, 64, 64).": "Channel axis 5 is out of range",
        "got an array of shape (2, 3, 32, 32); pass --channel-axis for multi-channel data.":
            "set Channel axis (under Advanced) for multi-channel data",
        "The model expects 2 channel(s) but the image has 1; check --channel-axis.":
            "the image has 1; set Channel axis (under Advanced).",
        "--ndim 3 needs a ZYX stack, but an image has shape (64, 64) (2D); use --ndim 2.":
            "A 3D model needs a ZYX stack, but an image has shape (64, 64) (2D); choose Model: 2D (slice by slice).",
        "The --init bundle is a pretrained 2D network (base 4, depth 2, 1 channel(s)) but this run needs":
            "The model chosen in 'Start from' is a pretrained 2D network",
        "Channel-separated masking (--mask channel) needs a multi-channel image, but this image has 1 channel; "
        "use --mask random or intensity, or give --channel-axis.":
            "(mask=channel) needs a multi-channel image, but this image has 1 channel; use mask=random or "
            "intensity, or set Channel axis (under Advanced).",
        "--mask cannot be both random and intensity; choose one (optionally with channel).":
            "mask (in Method parameters) cannot be both random and intensity",
        "use a larger image or fewer regions (--param n_regions=...).": "(n_regions=... in Method parameters)",
        "give a Z stack (ZYX) or choose another --method.": "choose another Method.",
        "Bad parameter for --method mim: unexpected keyword 'x'.": "Bad parameter for the method mim",
    }
    for message, expected in cases.items():
        text = widget_text(message)
        assert expected in text and "--" not in text, (message, text)
    assert widget_text("A plain sentence - with a dash.") == "A plain sentence - with a dash."
