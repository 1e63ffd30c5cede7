"""Bad inputs give one-sentence notifications and leave the viewer usable; 2D, 3D and
multi-channel layers work and outputs keep the image's geometry. Run under ``xvfb-run -a``."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QFileDialog
from widget_utils import Notes, make_widget, run, tiny, wait_idle

from napari_regcon._widgets import jobs
from napari_regcon.core.postprocess import remove_small_regions, uncertainty_map

pytestmark = pytest.mark.gui


def test_bad_inputs_are_notified(make_napari_viewer, qtbot, em_small, tmp_path, monkeypatch):
    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    ft, pr, pt = w.finetune, w.predict, w.pretrain
    tiny(ft, steps=3)

    notes = Notes()
    ft.panel.start_button.click()  # no labels layer yet
    assert "labels layer" in notes.errors()[-1]
    pr.panel.start_button.click()  # no model yet
    assert "segmentation model" in notes.errors()[-1]
    pt.images.set_checked([])
    pt.panel.start_button.click()
    assert "Tick at least one image" in notes.errors()[-1]

    # labels with one class only: the core's one-sentence RegconError, shown as is
    one = viewer.add_labels((truth == 2).astype(np.uint8), name="one class")
    ft.labels.set_layer(one)
    run(qtbot, ft)
    assert "single class" in notes.errors()[-1] and "background" in notes.errors()[-1]
    # labels of another shape
    wrong = viewer.add_labels(np.zeros((4, 64, 64), np.uint8), name="wrong")
    ft.labels.set_layer(wrong)
    ft.panel.start_button.click()
    assert "(4, 64, 64)" in notes.errors()[-1] and "(4, 128, 128)" in notes.errors()[-1]
    # no annotated pixel
    empty = viewer.add_labels(np.zeros(raw.shape, np.uint8), name="empty")
    ft.labels.set_layer(empty)
    run(qtbot, ft)
    assert "no annotated pixel" in notes.errors()[-1]
    # a foreign file offered as a model
    bad = tmp_path / "notes.pt"
    bad.write_text("not a model")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(bad), "")))
    assert pr.model.load() is None and "notes.pt" in notes.errors()[-1] and not w.predict.model.current()
    # running out of memory in the worker
    good = viewer.add_labels(np.where(np.arange(4)[:, None, None] == 0, truth, 0).astype(np.uint8), name="good")
    ft.labels.set_layer(good)

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 80.0 GiB")

    with monkeypatch.context() as m:
        m.setattr(jobs, "finetune_job", no_memory)
        run(qtbot, ft)
    assert notes.errors()[-1].startswith("Out of memory")
    # every message is one sentence, and nothing was left running or locked
    assert all(m.count(". ") == 0 and m.endswith(".") for m in notes.errors()), notes.errors()
    assert not w.session.busy and ft.inputs.isEnabled() and ft.panel.start_button.isEnabled()

    # the viewer is still usable: a proper run now succeeds
    run(qtbot, ft)
    assert w.session.latest("segmentation") is not None


def test_layer_removed_mid_run_and_semi_supervised(make_napari_viewer, qtbot, em_small):
    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    ft = w.finetune
    labels = viewer.add_labels(np.where(np.arange(4)[:, None, None] == 0, truth, 0).astype(np.uint8), name="lab")
    ft.labels.set_layer(labels)
    tiny(ft, steps=400)
    ft.preview_every = 0.2
    notes = Notes()
    ft.panel.start_button.click()
    qtbot.waitUntil(lambda: ft.preview_layer is not None, timeout=30_000)
    viewer.layers.remove(ft.preview_layer)  # no more previews, no error
    viewer.layers.remove(labels)  # training goes on with the data it started with
    qtbot.waitUntil(lambda: ft.status.step >= 20, timeout=30_000)
    ft.panel.stop_button.click()
    wait_idle(qtbot, ft)
    assert any("preview layer was removed" in m for m in notes.infos())
    assert any("'lab' was removed" in m for m in notes.infos())
    assert not notes.errors() and "live preview" not in [ly.name for ly in viewer.layers]
    assert w.session.latest("segmentation") is not None

    # unlabeled layers for semi-supervised fine-tuning reach the core's semi-supervised job
    viewer.add_image(raw[:, ::-1].copy(), name="unlabeled")
    labels = viewer.add_labels(np.where(np.arange(4)[:, None, None] == 0, truth, 0).astype(np.uint8), name="lab2")
    ft.labels.set_layer(labels)
    ft.init.select(None)
    ft.unlabeled.set_checked([viewer.layers["unlabeled"]])
    tiny(ft, steps=3)
    run(qtbot, ft)
    assert not notes.errors()
    info = w.session.latest("segmentation").bundle["pretext"].get("finetune", {})
    assert info.get("unlabeled_images") == 1


def test_2d_multichannel_and_3d(make_napari_viewer, qtbot, em_small):
    raw, truth = em_small
    # a single 2D image
    viewer, w = make_widget(make_napari_viewer, raw[0], scale=(4.0, 4.0))
    ft, pr = w.finetune, w.predict
    lab = ft.create_labels_layer()
    assert lab.data.shape == (128, 128)
    lab.data[:] = truth[0]
    tiny(ft, steps=4)
    ft.preview_every = 0.0
    run(qtbot, ft)
    assert ft.preview_layer.data.any() and set(np.unique(ft.preview_layer.data)) <= {1, 2}
    run(qtbot, pr)
    assert pr.last_prediction.data.shape == (128, 128) and tuple(pr.last_prediction.scale) == (4.0, 4.0)

    # two channels in one layer, channel axis between z and y (ZCYX, as ImageJ hyperstacks load)
    two = np.stack([raw, 255 - raw], axis=1)
    img = viewer.add_image(two, name="two channels", scale=(50.0, 1.0, 4.0, 4.0))
    viewer.layers.remove(lab)
    viewer.layers.remove(pr.last_prediction)
    viewer.layers.remove(ft.preview_layer)
    viewer.layers.remove("em")
    ft.image.set_layer(img)
    lab = ft.create_labels_layer()
    # one ZYX array repeated over the channel axis (stride 0) keeps it aligned with the image at every channel
    assert lab.data.shape == (4, 2, 128, 128) and lab.data.strides[1] == 0
    lab.data[0, 0] = truth[0]
    ft.preview.setChecked(False)
    ft.init.select(None)  # a new network for two channels
    run(qtbot, ft)
    model = w.session.latest("segmentation")
    assert model.bundle["model"]["in_channels"] == 2 and model.bundle["data"]["channel_axis"] == 1
    pr.image.set_layer(img)
    run(qtbot, pr)
    pred = pr.last_prediction
    assert pred.data.shape == (4, 2, 128, 128) and tuple(pred.scale) == (50.0, 1.0, 4.0, 4.0)
    assert set(np.unique(pred.data)) <= {1, 2}

    # a 3D model on a ZYX stack, with the live preview of the slab around the plane in view
    viewer.layers.clear()
    vol = viewer.add_image(raw, name="volume")
    ft.image.set_layer(vol)
    ft.network.channel_axis.setCurrentText("none")
    lab3 = ft.create_labels_layer()
    lab3.data[:] = np.where(np.arange(4)[:, None, None] < 2, truth, 0)
    ft.init.select(None)
    ft.options.ndim.setCurrentIndex(1)
    tiny(ft, steps=3, patch="4,32,32")
    ft.preview.setChecked(True)
    viewer.dims.set_current_step(0, 3)
    run(qtbot, ft)
    model = w.session.latest("segmentation")
    assert model.bundle["model"]["ndim"] == 3
    prev = ft.preview_layer.data
    assert prev[3].any() and not prev[:3].any()


def test_postprocessing_helpers():
    labels = np.ones((2, 40, 40), np.uint8)
    labels[:, 10:30, 10:30] = 2
    labels[:, 15, 15] = 1  # a 1-pixel hole in class 2
    labels[:, 2, 2] = 2  # a 1-pixel speck of class 2
    clean = remove_small_regions(labels, [1, 2], min_size=5)
    assert clean[:, 15, 15].tolist() == [2, 2] and clean[:, 2, 2].tolist() == [1, 1]
    assert (clean[:, 10:30, 10:30] == 2).sum() == 2 * 400 and labels[0, 15, 15] == 1  # input untouched
    p = np.stack([np.full((4, 4), 0.5), np.full((4, 4), 0.5)])
    p[:, 0, 0] = [1.0, 0.0]
    for kind in ("entropy", "margin"):
        u = uncertainty_map(p, kind)
        assert u[1, 1] == pytest.approx(1.0, abs=1e-5) and u[0, 0] == pytest.approx(0.0, abs=1e-5)


def test_crf_option(make_napari_viewer, qtbot, em_small):
    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    ft, pr = w.finetune, w.predict
    ft.labels.set_layer(viewer.add_labels(np.where(np.arange(4)[:, None, None] == 0, truth, 0).astype(np.uint8)))
    tiny(ft, steps=20)
    ft.preview.setChecked(False)
    run(qtbot, ft)
    assert pr.crf.isEnabled()
    run(qtbot, pr)
    plain = pr.last_prediction.data.copy()
    pr.crf.setChecked(True)
    run(qtbot, pr)
    refined = pr.last_prediction.data
    assert refined.shape == plain.shape and set(np.unique(refined)) <= {1, 2}
    assert "CRF-refined" in pr.status.message and (refined != plain).any()


def test_closing_the_widget_mid_run_stops_the_run(make_napari_viewer, qtbot, em_small):
    raw, _ = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    tiny(w.pretrain, steps=100_000)
    w.pretrain.panel.start_button.click()
    qtbot.waitUntil(lambda: w.pretrain.status.step >= 2, timeout=30_000)
    worker, session = w.pretrain.runner.worker, w.session
    notes = Notes()
    viewer.window.remove_dock_widget("all")
    w.deleteLater()
    qtbot.waitUntil(lambda: not session.busy and not worker.is_running, timeout=30_000)
    qtbot.wait(100)
    assert not notes.errors()


def test_form_parsers():
    from napari_regcon._widgets.layers import parse_class_names
    from napari_regcon.core.errors import RegconError
    from napari_regcon.core.options import parse_params

    assert parse_params("ratio=0.5, patch=[4,16,16]; mask=intensity") == {
        "ratio": 0.5, "patch": [4, 16, 16], "mask": "intensity"}
    assert parse_params("") == {}
    with pytest.raises(RegconError, match="key=value"):
        parse_params("ratio 0.5")
    assert parse_class_names(" background, membrane ,, mito") == {1: "background", 2: "membrane", 3: "mito"}


def test_live_preview_is_one_forward_pass_that_matches_tiled_prediction(em_small, monkeypatch):
    """The preview of the plane in view runs the network once (no overlapping tiles) and agrees
    with the tiled prediction of that plane."""
    from napari_regcon.core import inference
    from napari_regcon.core.workflows import finetune_job, run_predict

    raw, truth = em_small
    labels = np.zeros_like(truth)
    labels[0] = truth[0]
    bundle = finetune_job(raw, labels, steps=30, base=4, depth=2, batch_size=4, patch_size=64, seed=0).run()
    tiles: list[int] = []
    original = inference.UNet.forward

    def counting(self, x):
        tiles.append(int(x.shape[0]))
        return original(self, x)

    monkeypatch.setattr(inference.UNet, "forward", counting)
    z, preview = jobs.predict_plane(bundle, raw, None, 2)
    assert z == 2 and preview.shape == raw.shape[1:] and tiles == [1]
    monkeypatch.setattr(inference.UNet, "forward", original)
    tiled, _ = run_predict(bundle, raw[2:3], tile=(64, 64), class_prior="on")  # a plane of the labeled stack
    assert (preview == tiled[0]).mean() > 0.95
