"""Two-photon and other 3D stacks in the dock widget (issue 13): the 3D preset on a thin stack,
errors in the widget's own words, the plugin's layers over a multi-channel image, and the voxel
size from the plugin's reader. Real short runs on real crops; run under ``xvfb-run -a``."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from widget_utils import Notes, make_widget, paint_stroke, run, tiny

from napari_regcon._widgets.layers import repeated_axes, spatial_labels
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
    note = "The patch size 8x128x128 is larger than the stack (3x96x96), so training uses 3x96x96."

    _preset_3d(w.pretrain)
    assert w.pretrain.options.patch.text() == "8,128,128"
    run(qtbot, w.pretrain)
    assert not notes.errors(), notes.errors()
    pre = w.session.latest("pretrained")
    assert pre is not None and pre.bundle["data"]["patch_size"] == [3, 96, 96]
    assert note in w.pretrain.panel.label.text()  # said in the section's status line, and kept there

    ft = w.finetune
    _preset_3d(ft)
    lab = ft.create_labels_layer()
    lab.data[1] = truth[1]  # the middle plane painted
    ft.init.select(pre)
    assert ft.options.patch.text() == "3,96,96"  # a pretrained model brings its patch ...
    ft.options.patch.setText("8,128,128")  # ... and the preset's is clipped again
    run(qtbot, ft)
    assert not notes.errors(), notes.errors()
    seg = w.session.latest("segmentation")
    assert seg is not None and seg.bundle["model"]["ndim"] == 3 and seg.bundle["data"]["patch_size"] == [3, 96, 96]
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


@pytest.fixture(scope="module")
def two_channels(vessel_dir, vessel_thin) -> tuple[np.ndarray, np.ndarray]:
    """A 2-channel ZCYX stack built from two real two-photon stacks (01 and 04, the same 3x96x96 crop)
    and the labels of channel 1."""
    raw, truth = vessel_thin
    other = tifffile.imread(vessel_dir / "raw_04.tif")[4:7, 200:296, 200:296]
    return np.stack([raw, other], axis=1), truth


def _displayed(layer) -> np.ndarray:
    """The 2D slice napari shows of ``layer`` at the viewer's current position."""
    return np.asarray(layer._slice.image.raw)


def test_plugin_layers_show_over_every_channel(make_napari_viewer, qtbot, two_channels):
    zcyx, truth = two_channels
    scale = (5.0, 1.0, 0.994, 0.994)
    viewer, w = make_widget(make_napari_viewer, zcyx, show=True, name="two channels", scale=scale)
    img = viewer.layers["two channels"]
    notes = Notes()
    ft, pr, co = w.finetune, w.predict, w.correct

    lab = ft.create_labels_layer()
    zyx = spatial_labels(lab.data, img, 1)
    # one ZYX labels array, seen over the image's channel axis (stride 0): no channel of its own
    assert zyx.shape == (3, 96, 96) and repeated_axes(lab.data) == (1,) and np.shares_memory(zyx, lab.data)
    assert tuple(lab.scale) == scale and tuple(lab.translate) == tuple(img.translate)
    zyx[1] = truth[1]  # strokes everywhere on the middle plane
    lab.refresh()
    viewer.dims.set_current_step(0, 1)
    tiny(ft, steps=4)
    ft.preview_every = 0.0
    run(qtbot, ft)
    model = w.session.latest("segmentation")
    assert model is not None and model.bundle["model"]["in_channels"] == 2 and model.bundle["data"]["channel_axis"] == 1
    pr.uncertainty.setChecked(True)
    pr.probabilities.setChecked(True)
    pr.image.set_layer(img)
    run(qtbot, pr)
    assert not notes.errors(), notes.errors()
    pred = pr.last_prediction
    made = [lab, ft.preview_layer, pred, viewer.layers["two channels uncertainty"],
            *[ly for ly in viewer.layers if ly.name.startswith("P(")]]
    assert len(made) == 5
    for layer in made:
        layer.visible = True

    viewer.dims.set_current_step(1, 1)  # channel 2 in view
    assert viewer.dims.point[1] == 1
    for layer in made:
        assert layer.visible and layer.ndim == 4 and repeated_axes(layer.data) == (1,), layer.name
        assert tuple(layer.scale) == scale, layer.name
        shown = _displayed(layer)
        assert shown.shape == (96, 96) and shown.any(), layer.name  # shown at channel 2, not hidden
        np.testing.assert_array_equal(shown, np.asarray(layer.data)[1, 0])  # the plane z=1 of the one array
    np.testing.assert_array_equal(_displayed(lab), truth[1])

    # painting at channel 2 writes into the ZYX labels, and channel 1 shows it
    zyx[1, 10:30, 10:60] = 0
    lab.refresh()
    paint_stroke(qtbot, viewer, lab, (20 * 0.994, 20 * 0.994), (20 * 0.994, 50 * 0.994), label=2)
    stroke = zyx[1, 10:30, 10:60] == 2
    assert stroke.sum() > 50 and not zyx[[0, 2]].any()
    assert (_displayed(lab)[10:30, 10:60] == 2).sum() == stroke.sum()
    viewer.dims.set_current_step(1, 0)
    assert (_displayed(lab)[10:30, 10:60] == 2).sum() == stroke.sum()

    # correcting at channel 2: a repainted prediction goes into the labels once, not once per channel
    viewer.dims.set_current_step(1, 1)
    co.labels.set_layer(lab)
    co.prediction.set_layer(pred)
    pred_zyx = np.asarray(pred.data)[:, 0]
    target = 1 if (pred_zyx[1, 70:80, 70:90] == 2).mean() > 0.5 else 2
    zyx[1, 60:90, 60:95] = 0
    lab.refresh()
    before = zyx.copy()
    paint_stroke(qtbot, viewer, pred, (75 * 0.994, 70 * 0.994), (75 * 0.994, 85 * 0.994), label=target)
    repainted = int((np.asarray(pred.data)[:, 0] != pred.metadata["regcon_original"][:, 0]).sum())
    assert repainted > 20
    n = co.copy_user_corrections()
    assert n == repainted and (zyx[1, 60:90, 60:95] == target).sum() >= repainted
    # and the prediction of the slice in view (z = 1) fills what is not annotated there, once
    unannotated = int((zyx[1] == 0).sum())
    n = co.accept_current_slice()
    assert n == unannotated > 0 and not (zyx[1] == 0).any() and "slice 1" in notes.infos()[-1]
    assert (zyx[1] == before[1])[before[1] > 0].all()  # the user's own labels were kept
    assert not zyx[[0, 2]].any()

    assert not notes.errors(), notes.errors()


def test_channel_first_stack_gets_plain_zyx_layers(make_napari_viewer, qtbot, two_channels):
    """Channel first (CZYX): the plugin's layers are plain ZYX, lined up by napari's trailing axes."""
    zcyx, truth = two_channels
    viewer, w = make_widget(make_napari_viewer, np.moveaxis(zcyx, 1, 0), show=True, name="channel first",
                            scale=(1.0, 5.0, 0.994, 0.994))
    notes = Notes()
    ft, pr = w.finetune, w.predict
    lab = ft.create_labels_layer()
    assert lab.data.shape == (3, 96, 96) and not repeated_axes(lab.data) and tuple(lab.scale) == (5.0, 0.994, 0.994)
    lab.data[1] = truth[1]
    tiny(ft, steps=2)
    ft.preview.setChecked(False)
    run(qtbot, ft)
    assert w.session.latest("segmentation").bundle["data"]["channel_axis"] == 0
    run(qtbot, pr)
    pred = pr.last_prediction
    assert pred.data.shape == (3, 96, 96) and tuple(pred.scale) == (5.0, 0.994, 0.994)
    viewer.dims.set_current_step(0, 1)  # channel 2 (the leading world axis)
    viewer.dims.set_current_step(1, 1)
    for layer in (lab, pred):
        np.testing.assert_array_equal(_displayed(layer), layer.data[1])
        assert _displayed(layer).any()
    lab.data[1, 10:30, 10:60] = 0
    lab.refresh()
    paint_stroke(qtbot, viewer, lab, (20 * 0.994, 20 * 0.994), (20 * 0.994, 50 * 0.994), label=1)
    assert (lab.data[1, 10:30, 10:60] == 1).sum() > 50 and (lab.data[[0, 2]] == 0).all()
    assert not notes.errors(), notes.errors()


def test_reader_layer_in_the_widget_and_the_isotropic_warning(make_napari_viewer, qtbot, two_channels, tmp_path):
    zcyx, truth = two_channels
    path = tmp_path / "two_channels.tif"  # an ImageJ hyperstack, as Fiji saves a 2-channel two-photon stack
    tifffile.imwrite(path, zcyx, imagej=True, resolution=(1 / 0.994, 1 / 0.994),
                     metadata={"spacing": 5.0, "unit": "um", "axes": "ZCYX"})
    viewer, w = make_widget(make_napari_viewer)
    (img,) = viewer.open(str(path), plugin="napari-regcon")  # File > Open with Plugin > napari-regcon
    assert img.data.shape == (2, 3, 96, 96) and tuple(img.scale) == pytest.approx((1.0, 5.0, 0.994, 0.994))
    notes = Notes()
    ft, pt = w.finetune, w.pretrain
    ft.image.set_layer(img)
    lab = ft.create_labels_layer()  # the widget finds the channels (axis 0, from the reader's metadata)
    assert lab.data.shape == (3, 96, 96) and tuple(lab.scale) == pytest.approx((5.0, 0.994, 0.994))
    lab.data[1] = truth[1]
    _preset_3d(ft)
    ft.options.patch.setText("16,64,64")
    ft.preview.setChecked(False)
    run(qtbot, ft)
    seg = w.session.latest("segmentation").bundle
    assert seg["model"]["in_channels"] == 2 and seg["data"]["channel_axis"] == 0 and seg["model"]["ndim"] == 3
    assert not notes.errors() and not notes.warnings(), (notes.errors(), notes.warnings())  # its scale is right

    # the same stack without its voxel size (napari's default scale 1, 1, 1): a 3D run warns, once
    plain = viewer.add_image(np.moveaxis(zcyx, 1, 0), name="no voxel size")
    pt.images.set_checked([plain])
    _preset_3d(pt, steps=1)
    pt.options.patch.setText("3,32,32")
    pt.network.channel_axis.setCurrentText("0")
    run(qtbot, pt)
    assert len(notes.warnings()) == 1, notes.warnings()
    warning = notes.warnings()[0]
    assert "'no voxel size' looks like a stack of thin planes (3 planes of 96x96 pixels)" in warning
    assert "isotropic (1, 1, 1)" in warning and "napari-regcon" in warning and warning.count(". ") == 0
    run(qtbot, pt)
    assert len(notes.warnings()) == 1 and not notes.errors(), (notes.warnings(), notes.errors())
    assert w.session.latest("pretrained").bundle["training"]["step"] == 1


@pytest.mark.parametrize("stack", ["01", "02", "03", "04", "01+04"])
def test_two_photon_preset_end_to_end_on_every_vesselnn_stack(make_napari_viewer, qtbot, vessel_dir, stack):
    """Each shared two-photon stack (all its planes, a 128x128 crop) opened with the plugin's reader, and a
    2-channel stack built from two of them: the preset pretrains, fine-tunes a 3D network that convolves in
    plane where the planes are far apart, and predicts, all through the widget."""
    from napari_regcon._reader import read_layers

    names = stack.split("+")
    (data, kw, _), = read_layers(str(vessel_dir / f"raw_{names[0]}.tif"))
    raw = np.asarray(data)[:, :128, :128]
    scale = kw["scale"]
    if len(names) == 2:  # channels first, as the reader gives a multi-channel file
        other = tifffile.imread(vessel_dir / f"raw_{names[1]}.tif")[:, :128, :128]
        raw, scale = np.stack([raw, other]), (1.0, *scale)
    truth = tifffile.imread(vessel_dir / f"labels_{names[0]}.tif")[:, :128, :128].astype(np.uint8) + 1
    viewer, w = make_widget(make_napari_viewer, raw, name=f"stack {stack}", scale=scale)
    notes = Notes()
    _preset_3d(w.pretrain)
    run(qtbot, w.pretrain, timeout=120_000)
    ft = w.finetune
    _preset_3d(ft)
    lab = ft.create_labels_layer()
    zyx = spatial_labels(lab.data, viewer.layers[f"stack {stack}"], 0 if len(names) == 2 else None)
    zyx[len(truth) // 2, ::7] = truth[len(truth) // 2, ::7]  # strokes on the middle plane
    lab.refresh()
    ft.preview_every = 0.0
    run(qtbot, ft, timeout=120_000)
    assert not notes.errors(), notes.errors()
    seg = w.session.latest("segmentation").bundle
    assert seg["model"]["ndim"] == 3 and seg["model"]["in_channels"] == len(names)
    assert seg["model"]["conv_z"][0] is False  # planes 5 µm apart at ~1-1.6 µm pixels: the first level in plane
    assert seg["data"]["patch_size"][0] <= truth.shape[0]
    w.predict.image.set_layer(viewer.layers[f"stack {stack}"])
    run(qtbot, w.predict, timeout=120_000)
    assert not notes.errors(), notes.errors()
    pred = np.asarray(w.predict.last_prediction.data)
    assert set(np.unique(pred)) <= {1, 2} and pred.shape[-2:] == (128, 128)
