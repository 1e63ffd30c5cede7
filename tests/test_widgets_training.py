"""The dock widget drives real short runs through its buttons: pretrain, stop, fine-tune, predict.

Each run is a real (tiny) training in a napari thread worker on a 4x128x128 ISBI crop; the tests
wait for the worker and check the layers and bundles it produced. Run under ``xvfb-run -a``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from qtpy.QtWidgets import QFileDialog
from widget_utils import EM_SCALE, Notes, make_widget, run, tiny, wait_idle

from napari_regcon._widgets.pretrain import method_text
from napari_regcon.core.checkpoint import load_bundle
from napari_regcon.core.metrics import scores
from napari_regcon.core.models import UNetConfig, build_model
from napari_regcon.core.pretext import PRETEXTS

pytestmark = pytest.mark.gui


def test_pretrain_lists_methods_and_trains(make_napari_viewer, qtbot, em_small):
    raw, _ = em_small
    viewer, w = make_widget(make_napari_viewer, raw, scale=EM_SCALE)
    sec = w.pretrain
    methods = [sec.method.itemData(i) for i in range(sec.method.count())]
    assert sorted(methods) == sorted(PRETEXTS)  # built from the registry at runtime
    assert sec.method_hint.text() == method_text(PRETEXTS[sec.method.currentData()].description)
    from napari_regcon.core.precision import precision_name, resolve_precision
    arithmetic = precision_name(resolve_precision("auto", torch.device("cpu")))  # bf16 on CPUs with bf16 units
    assert sec.device.text().startswith("Device: ") and sec.device.text().endswith(f", {arithmetic} arithmetic")
    assert [ly.name for ly in sec.images.checked_layers()] == ["em"]
    tiny(sec, steps=6)
    messages: list[str] = []
    sec.status.events.message.connect(lambda m: messages.append(str(m)))  # psygnal: the new value
    sec.panel.start_button.click()
    qtbot.waitUntil(lambda: not sec.inputs.isEnabled(), timeout=5000)  # inputs locked while running
    assert not w.finetune.panel.start_button.isEnabled()  # one run at a time
    wait_idle(qtbot, sec)
    running = [m for m in messages if m.startswith("Running on")]
    assert running and f", {arithmetic}" in running[0], messages  # the run says which arithmetic it uses
    entry = w.session.latest("pretrained")
    assert entry is not None and entry.bundle["pretext"]["method"] == "mim"
    assert entry.bundle["training"]["step"] == 6
    assert len(sec.panel.plot.steps) == 6 and np.isfinite(sec.panel.plot.losses).all()
    assert sec.inputs.isEnabled() and w.finetune.panel.start_button.isEnabled()
    assert w.finetune.init.current() is entry  # offered as the start of fine-tuning


def test_stop_keeps_a_loadable_bundle(make_napari_viewer, qtbot, em_small, tmp_path, monkeypatch):
    raw, _ = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    sec = w.pretrain
    tiny(sec, steps=100_000)
    sec.panel.start_button.click()
    qtbot.waitUntil(lambda: sec.status.step >= 3, timeout=30_000)
    sec.panel.stop_button.click()
    wait_idle(qtbot, sec, timeout=30_000)
    entry = w.session.latest("pretrained")
    assert entry is not None and "stopped" in entry.name
    assert 3 <= entry.bundle["training"]["step"] < 100_000
    path = tmp_path / "stopped"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(path), "")))
    assert sec.saver.save() == str(path) + ".pt"
    loaded = load_bundle(str(path) + ".pt")
    assert loaded["kind"] == "pretrained" and loaded["training"]["step"] == entry.bundle["training"]["step"]
    # and it loads back into the session through the file dialog of another section
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(path) + ".pt", "")))
    n = len(w.session.models)
    assert w.finetune.init.load() is not None and len(w.session.models) == n + 1


def test_finetune_preview_predict_correct_retrain(make_napari_viewer, qtbot, em_small):
    raw, truth = em_small  # truth: 1 = cell interior, 2 = membrane
    viewer, w = make_widget(make_napari_viewer, raw, scale=EM_SCALE, translate=(0, 8, 8))
    notes = Notes()
    ft = w.finetune
    ft.classes.setText("cell, membrane")
    labels = ft.create_labels_layer()
    assert labels.data.shape == raw.shape and labels.data.dtype == np.uint8 and not labels.data.any()
    assert tuple(labels.scale) == EM_SCALE and tuple(labels.translate) == (0, 8, 8)
    assert labels.features["class"].tolist() == ["not annotated", "cell", "membrane"]
    labels.data[0] = truth[0]  # one annotated slice, as a user would paint it
    viewer.dims.set_current_step(0, 2)  # the user looks at slice 2 while training
    tiny(ft, steps=60)
    # width 8: a width-4 net is too weak after 60 steps to tell membrane apart by a margin larger than
    # the half class prior the dense recipe adds back at prediction (it then predicts 1-4 % membrane)
    ft.network.base.setValue(8)
    ft.preview_every = 0.3
    run(qtbot, ft, timeout=120_000)
    model = w.session.latest("segmentation")
    assert model is not None and model.bundle["classes"]["values"] == [1, 2]
    assert model.bundle["classes"]["names"] == ["cell", "membrane"]
    prev = ft.preview_layer
    assert prev is not None and tuple(prev.scale) == EM_SCALE
    planes = [int(prev.data[z].any()) for z in range(4)]
    assert planes == [0, 0, 1, 0], planes  # only the plane in view holds a preview
    assert set(np.unique(prev.data[2])) <= {1, 2}

    pr = w.predict
    assert pr.model.current() is model
    pr.probabilities.setChecked(True)
    pr.uncertainty.setChecked(True)
    pr.min_size.setValue(5)
    run(qtbot, pr)
    pred = pr.last_prediction
    assert pred.data.shape == raw.shape and pred.data.dtype == np.uint8
    # what the user looks at next: the prediction, the superseded preview hidden, the training labels on
    # top of it and selected, so that correction strokes show where they are painted
    assert not prev.visible and pred.visible
    assert viewer.layers[-1] is labels and viewer.layers.selection.active is labels
    assert set(np.unique(pred.data)) <= {1, 2}
    assert tuple(pred.scale) == EM_SCALE and tuple(pred.translate) == (0, 8, 8)
    dice = scores(pred.data[1:], truth[1:])["classes"]["2"]["dice"]
    chance = (truth[1:] == 2).mean()  # Dice of guessing membrane at its frequency
    assert dice > max(0.6, chance + 0.3), (dice, chance)
    prob = viewer.layers["P(membrane)"].data
    unc = viewer.layers["em uncertainty"].data
    assert prob.shape == unc.shape == raw.shape and 0 <= prob.min() and prob.max() <= 1
    assert unc.max() <= 1.0 + 1e-6
    # uncertainty is highest where the model is least sure: near p = 0.5
    near = np.abs(prob - 0.5) < 0.1
    assert unc[near].mean() > unc[~near].mean()

    # correct: accept slice 1 into the labels (only unannotated pixels), then retrain
    corr = w.correct
    assert corr.prediction.layer() is pred and corr.labels.layer() is labels
    labels.data[1, :4, :4] = 2  # the user's own strokes on slice 1
    viewer.dims.set_current_step(0, 1)
    assert corr.accept_current_slice() == raw.shape[1] * raw.shape[2] - 16
    assert (labels.data[1, :4, :4] == 2).all()  # never overwritten without asking
    assert (labels.data[1][4:, 4:] == pred.data[1][4:, 4:]).all()
    labels.undo()
    assert not labels.data[1][4:, 4:].any()  # the copy is one undo step
    # a correction painted on the prediction goes into the labels
    pred.data[3, 10:20, 10:20] = 2 if pred.data[3, 15, 15] == 1 else 1
    assert corr.copy_user_corrections() == 100
    assert (labels.data[3, 10:20, 10:20] == pred.data[3, 10:20, 10:20]).all()
    n_models = len(w.session.models)
    ft.options.steps.setValue(10)
    corr.retrain_button.click()
    wait_idle(qtbot, ft, timeout=120_000)
    assert len(w.session.models) == n_models + 1, (ft.status.message, notes.errors(), notes.infos()[-3:])
    again = w.session.latest("segmentation")
    assert again is not model and again.name.startswith("retrained on em")
    if ft.preview_times:  # the round showed previews: on the reused preview layer, shown again, above the prediction
        assert ft.preview_layer is prev and prev.visible
        assert list(viewer.layers).index(prev) > list(viewer.layers).index(pred)
    # it continued from the fine-tuned model: 10 more steps moved the weights much less than the
    # 60 steps that took a fresh network (same seed) to the first model
    torch.manual_seed(0)
    fresh = build_model(UNetConfig.from_dict(model.bundle["model"])).state_dict()

    def dist(a: dict, b: dict) -> float:
        return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a if k.endswith("weight")) ** 0.5)

    assert dist(again.bundle["state_dict"], model.bundle["state_dict"]) < 0.5 * dist(model.bundle["state_dict"], fresh)
    assert not notes.errors()


def test_strokes_run_ends_by_itself_and_says_so(make_napari_viewer, qtbot, em_small):
    """Painted strokes (not a dense slice) train with the strokes recipe, which ends once the
    prediction stops changing; the status line tells the user, and the model is kept."""
    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    ft = w.finetune
    ft.classes.setText("cell, membrane")
    labels = ft.create_labels_layer()
    labels.data[0, ::9] = truth[0, ::9]  # every 9th row of slice 0: ~11 % of it, strokes across both classes
    labels.refresh()
    ft.init.select(None)
    tiny(ft, steps=2000, patch="64")
    ft.network.base.setValue(8)
    run(qtbot, ft, timeout=120_000)
    entry = w.session.latest("segmentation")
    assert entry is not None
    steps = entry.bundle["training"]["step"]
    assert steps < 2000 and entry.bundle["data"]["recipe"]["name"] == "strokes"
    assert "ended by itself" in ft.status.message and "prediction stopped changing" in ft.status.message


def test_a_full_mask_model_adds_its_class_shares_on_its_own_stack_only(make_napari_viewer, qtbot, em_small):
    """A dense slice trains the dense recipe, whose bundle adds part of the labels' class prior back: the
    Predict section applies it to the labeled image and not to another image layer (whose objects may
    fill another share), without a box to tick."""
    from napari_regcon.core.workflows import run_predict

    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    ft = w.finetune
    ft.classes.setText("cell, membrane")
    labels = ft.create_labels_layer()
    labels.data[0] = truth[0]  # one slice painted fully
    labels.refresh()
    ft.init.select(None)
    tiny(ft, steps=3, patch="64")
    ft.network.base.setValue(8)
    run(qtbot, ft)
    bundle = w.session.latest("segmentation").bundle
    assert bundle["data"]["recipe"]["name"] == "dense" and bundle["classes"]["logit_offset"]
    other = viewer.add_image(np.ascontiguousarray(raw[:, ::-1]), name="another stack")
    for layer, prior in ((viewer.layers[0], "on"), (other, "off")):
        w.predict.image.set_layer(layer)
        run(qtbot, w.predict)
        expected, _ = run_predict(bundle, layer.data, class_prior=prior)
        assert np.array_equal(np.asarray(w.predict.last_prediction.data), np.asarray(expected)), layer.name
        assert ("(the labeled image)" if prior == "on" else "(another image)") in w.predict.status.message
        flipped, _ = run_predict(bundle, layer.data, class_prior="off" if prior == "on" else "on")
        assert not np.array_equal(np.asarray(flipped), np.asarray(expected))  # the choice shows in the labels


def _layers_now(viewer) -> dict[str, np.ndarray]:
    return {ly.name: np.array(ly.data, copy=True) for ly in viewer.layers}


def test_failed_run_leaves_layers_as_they_were_and_preview_states_its_cadence(make_napari_viewer, qtbot, em_small):
    """A run failing in the worker (labels of a single class) neither makes nor clears the live preview
    and notifies once, not again for the same failure; a real run says the preview is warming up until
    its first useful preview, and the checkbox then states the cadence measured in that run."""
    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    ft = w.finetune
    assert not any(c.isdigit() for c in ft.preview.text())  # no promised cadence before a run
    one = viewer.add_labels((truth == 2).astype(np.uint8), name="one class")
    ft.labels.set_layer(one)
    tiny(ft, steps=60)
    ft.preview_every = 0.2
    before = _layers_now(viewer)
    notes = Notes()
    run(qtbot, ft)
    assert "single class" in ft.status.message and len(notes.errors()) == 1, notes.errors()
    assert list(before) == [ly.name for ly in viewer.layers] and ft.preview_layer is None  # no preview layer
    run(qtbot, ft)  # the same failure again: the status says so, no second notification
    assert len(notes.errors()) == 1 and ft.status.message.startswith("Failed again: ")

    # a real run: "warming up" until the first preview, then the measured cadence on the checkbox
    good = viewer.add_labels(np.where(np.arange(4)[:, None, None] == 0, truth, 0).astype(np.uint8), name="good")
    ft.labels.set_layer(good)
    seen: list[tuple[str, bool, str]] = []
    ft.status.events.activity.connect(lambda v: seen.append((v, ft.preview_layer is None, ft.panel.label.text())))
    ft.options.steps.setValue(120)  # time for two previews after the warm-up on a slow CI machine (one came in 60)
    run(qtbot, ft, timeout=120_000)
    assert w.session.latest("segmentation") is not None, (ft.status.message, notes.errors())
    warming = [s for s in seen if "warming up" in s[0]]
    assert warming and all(none for _, none, _ in warming)  # said while no preview was shown yet
    assert any("warming up" in label for _, _, label in warming)  # on the progress line
    assert seen[-1][0] == ""  # and cleared
    prev = ft.preview_layer
    assert prev is not None and prev.data.any()
    m = re.fullmatch(r"Live preview \(every ~([\d.]+) s in the last run\)", ft.preview.text())
    times = ft.preview_times  # when the run's previews (not the final one) were made
    assert m and len(times) >= 2, (ft.preview.text(), times)
    assert abs(float(m.group(1)) - float(np.median(np.diff(times)))) < 0.051
    assert float(m.group(1)) >= 0.15  # about preview_every, never faster

    # the preview and a prediction exist; a failing run leaves both (and every other layer) as they were
    run(qtbot, w.predict)
    ft.labels.set_layer(one)
    before = _layers_now(viewer)
    run(qtbot, ft)
    assert len(notes.errors()) == 2 and ft.status.message.startswith("Failed: ")  # news again after a success
    after = _layers_now(viewer)
    assert list(after) == list(before)
    assert all(np.array_equal(after[k], before[k]) for k in before), [k for k in before if not np.array_equal(after[k], before[k])]
    assert ft.preview_layer is prev


def test_result_layers_are_added_one_per_event_loop_turn(make_napari_viewer, qtbot, em_small):
    """Each napari layer costs 100-150 ms to create; the Predict section adds them one per turn of the
    event loop (the viewer repaints in between), the prediction last: on top and selected."""
    from napari_regcon._widgets.updates import PredictResult

    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw, scale=EM_SCALE)
    pr, image = w.predict, viewer.layers["em"]
    probs = np.random.default_rng(0).random((2, *raw.shape), dtype=np.float32)
    res = PredictResult(labels=truth, probabilities=probs, uncertainty=probs[0], class_values=[1, 2],
                        class_names=["cell", "membrane"])
    pr._run = {"image": image, "channel_axis": None, "model": "m"}
    pr._add_layers(res)
    assert len(viewer.layers) == 2 and pr.adding_layers  # one layer now, the rest in later turns
    qtbot.waitUntil(lambda: not pr.adding_layers, timeout=5000)
    assert [layer.name for layer in viewer.layers] == ["em", "P(membrane)", "em uncertainty", "em prediction"]
    assert [layer.visible for layer in viewer.layers] == [True, False, False, True]
    assert pr.last_prediction is viewer.layers["em prediction"] is viewer.layers.selection.active
    assert np.array_equal(pr.last_prediction.data, truth) and pr.status.message.startswith("Done: prediction layer added")


def test_predicting_again_updates_the_earlier_result_layers_unless_corrected(make_napari_viewer, qtbot, em_small):
    """The correction loop predicts every round: the layers of the last prediction of the image are
    updated in place (no pile of stale layers, and no 100-150 ms layer creation each round), except a
    prediction the user has painted corrections on, which stays as it is beside the new one."""
    from napari_regcon._widgets.updates import PredictResult

    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw, scale=EM_SCALE)
    pr, image = w.predict, viewer.layers["em"]
    rng = np.random.default_rng(0)

    def predict(labels: np.ndarray) -> None:
        probs = rng.random((2, *raw.shape), dtype=np.float32)
        res = PredictResult(labels=labels, probabilities=probs, uncertainty=probs[0], class_values=[1, 2],
                            class_names=["cell", "membrane"])
        pr._run = {"image": image, "channel_axis": None, "model": "m"}
        pr._add_layers(res)
        qtbot.waitUntil(lambda: not pr.adding_layers, timeout=5000)

    predict(truth)
    first, prob = pr.last_prediction, viewer.layers["P(membrane)"]
    first.visible = False
    second_truth = np.where(truth == 1, 2, 1).astype(truth.dtype)
    predict(second_truth)
    assert [layer.name for layer in viewer.layers] == ["em", "P(membrane)", "em uncertainty", "em prediction"]
    assert pr.last_prediction is first and first.visible and viewer.layers["P(membrane)"] is prob
    assert np.array_equal(first.data, second_truth) and np.array_equal(first.metadata["regcon_original"], second_truth)
    assert pr.status.message.startswith("Done: prediction layer updated")
    # a correction painted on it: the next prediction goes into a new layer, the corrected one is kept
    first.data[0, :5, :5] = 1
    predict(truth)
    assert pr.last_prediction is not first and pr.last_prediction.name == "em prediction [1]"
    assert (first.data[0, :5, :5] == 1).all() and np.array_equal(pr.last_prediction.data, truth)
    assert w.correct.prediction.layer() is pr.last_prediction
    assert len(viewer.layers) == 5


def test_whole_slices_on_part_of_a_stack_train_twice_through_the_widget(make_napari_viewer, qtbot, em_small):
    """One slice of a stack painted fully: the run says at Start that a second pass will learn from the first
    model's answer on the other slices, the progress bar counts both passes, and the model kept is the
    second pass's (self-training, core/selftrain.py)."""
    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    ft = w.finetune
    ft.classes.setText("cell, membrane")
    labels = ft.create_labels_layer()
    labels.data[0] = truth[0]
    labels.refresh()
    painted = np.array(labels.data, copy=True)
    ft.init.select(None)
    tiny(ft, steps=3, patch="64")
    ft.network.base.setValue(8)
    run(qtbot, ft)
    assert "second pass" in ft.runner.note and "self-training" in ft.runner.note
    assert ft.status.total == 6 and ft.panel.bar.maximum() == 6 and ft.panel.bar.value() == 6
    entry = w.session.latest("segmentation")
    bundle = entry.bundle
    assert bundle["data"]["self_trained"] is True and bundle["training"]["step"] == 3
    assert "2 × 3 steps" in entry.name
    plot = ft.panel.plot  # the loss curve starts anew with the second network: the plot marks where
    assert [m.value() for m in plot.marks] == [3] and plot.steps == [1, 2, 3, 4, 5, 6]
    assert ft.panel.label.text().startswith("Done") and not ft.status.activity  # the result, not the last step
    np.testing.assert_array_equal(np.asarray(labels.data), painted)  # the model's answer never lands in the labels
