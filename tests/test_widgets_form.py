"""The training form never contradicts itself (issue 15): every data type × *Start from* (random,
a 2D model, a 3D model, and back) through the real Fine-tune section, checking what the form shows
and what a 2-step run on a 4x128x128 EM crop actually trains. Run under ``xvfb-run -a``."""

from __future__ import annotations

import numpy as np
import pytest
from widget_utils import Notes, clipped_texts, in_view, make_widget, run, tiny, wait_idle

from napari_regcon._widgets import ModelEntry
from napari_regcon._widgets.presets import PRESETS, preset_for
from napari_regcon.core.options import parse_patch
from napari_regcon.core.workflows import finetune_job, pretrain_job

pytestmark = pytest.mark.gui

OWN_BASE, OWN_DEPTH = 4, 2  # the user's own network size (Advanced), for a new network


@pytest.fixture(scope="module")
def start_models(em_small) -> dict[str, dict]:
    """A 2D pretrained model (width 8, depth 1, 48x48 patches) and a 3D segmentation model (width 6,
    depth 1, 4x32x32 patches), made by the core jobs in 2 steps each."""
    raw, truth = em_small
    labels = np.where(np.arange(4)[:, None, None] == 0, truth, 0).astype(np.uint8)
    m2 = pretrain_job([raw], "mim", ndim=2, patch_size=48, base=8, depth=1, steps=2, batch_size=2,
                      checkpoint_every=0).run()
    m3 = finetune_job(raw, labels, ndim=3, patch_size="4,32,32", base=6, depth=1, steps=2, batch_size=2,
                      checkpoint_every=0).run()
    return {"2D model": m2, "3D model": m3}


def _shown(ft) -> dict:
    """What the form shows (and whether it is locked)."""
    o, net = ft.options, ft.network
    return {"preset": ft.preset.currentIndex(), "ndim": 2 if o.ndim.currentIndex() == 0 else 3,
            "patch": o.patch.text(), "base": net.base.value(), "depth": net.depth.value(),
            "locked": not ft.preset.isEnabled(), "note": o.locked_note.text() if not o.locked_note.isHidden() else ""}


def _expected(preset: int, start: dict | None) -> dict:
    """What the form must show for the chosen data type and start model."""
    if start is None:
        p = PRESETS[preset]
        return {"preset": preset, "ndim": p.ndim, "patch": p.patch, "base": OWN_BASE, "depth": OWN_DEPTH,
                "locked": False, "note": ""}
    cfg, patch = start["model"], start["data"]["patch_size"]
    text = str(patch[0]) if len(patch) == 2 else ",".join(map(str, patch))
    return {"preset": preset_for(cfg["ndim"]), "ndim": cfg["ndim"], "patch": text, "base": cfg["base"],
            "depth": cfg["depth"], "locked": True,
            "note": f"Set by the chosen model: {cfg['ndim']}D, 1 channel, network width {cfg['base']}, depth "
                    f"{cfg['depth']}; it was trained on {'×'.join(map(str, patch))} patches."}


def test_every_data_type_and_start_model_shows_and_trains_one_setting(make_napari_viewer, qtbot, em_small,
                                                                        start_models):
    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    ft = w.finetune
    entries = {name: w.session.add(ModelEntry(name, b)) for name, b in start_models.items()}
    ft.labels.set_layer(viewer.add_labels(np.where(np.arange(4)[:, None, None] == 0, truth, 0).astype(np.uint8)))
    ft.preview.setChecked(False)
    ft.init.select(None)
    ft.network.base.setValue(OWN_BASE)
    ft.network.depth.setValue(OWN_DEPTH)
    notes = Notes()
    trained = 0
    for preset in range(len(PRESETS)):
        ft.init.select(None)
        ft.preset.setCurrentIndex(preset)  # the user's data type ...
        assert ft.network.base.value() == (PRESETS[preset].base if preset else OWN_BASE)  # ... brings its width
        ft.network.base.setValue(OWN_BASE)  # ... which the user may change
        for start in (None, "2D model", "3D model", None):  # the last: switching back to random initialisation
            ft.init.select(entries[start] if start else None)
            bundle = start_models[start] if start else None
            shown = _shown(ft)
            assert shown == _expected(preset, bundle), (PRESETS[preset].label, start, shown)
            assert PRESETS[shown["preset"]].ndim == shown["ndim"]  # the data type never contradicts the model
            assert ft.options.ndim.isEnabled() != shown["locked"] and ft.network.base.isEnabled() != shown["locked"]
            ft.options.steps.setValue(2)
            ft.options.batch.setValue(2)
            run(qtbot, ft)
            trained += 1
            assert len([m for m in w.session.models if m.kind == "segmentation"]) == trained + 1, notes.errors()
            out = w.session.latest("segmentation").bundle
            want = parse_patch(shown["patch"], shown["ndim"])
            want = [min(p, s) for p, s in zip(want, raw.shape[-shown["ndim"]:])]  # a patch is cut to the stack
            assert out["model"]["ndim"] == shown["ndim"] and out["data"]["patch_size"] == want, (start, out["data"])
            assert (out["model"]["base"], out["model"]["depth"]) == (shown["base"], shown["depth"])
    assert not notes.errors()

    # Model: 3D chosen by hand (random initialisation) shows the 3D data type, and 2D the 2D one
    ft.init.select(None)
    ft.options.ndim.setCurrentIndex(1)
    assert _shown(ft) == _expected(preset_for(3), None)
    ft.options.ndim.setCurrentIndex(0)
    assert _shown(ft) == {**_expected(preset_for(2), None), "base": PRESETS[preset_for(2)].base}  # its width


def test_pretrain_model_follows_the_data_type(make_napari_viewer, qtbot, em_small):
    raw, _ = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    pt = w.pretrain
    pt.options.ndim.setCurrentIndex(1)  # Model: 3D by hand
    three = preset_for(3)
    assert pt.preset.currentIndex() == three and pt.options.patch.text() == PRESETS[three].patch
    assert pt.preset_hint.text() == PRESETS[three].hint and pt.method_params.text() == "mask=intensity"
    pt.options.steps.setValue(2)
    pt.network.base.setValue(4)
    pt.network.depth.setValue(1)
    run(qtbot, pt)
    out = w.session.latest("pretrained").bundle
    assert out["model"]["ndim"] == 3 and out["data"]["patch_size"] == [4, 128, 128]
    pt.preset.setCurrentIndex(preset_for(2))
    assert pt.options.ndim.currentIndex() == 0 and pt.options.patch.text() == PRESETS[preset_for(2)].patch
    assert pt.method_params.text() == ""


@pytest.fixture(params=[1.0, 1.5], ids=["default font", "font x1.5"])
def font_scale(request, qapp):
    """The QApplication font and napari's font size (Preferences > Appearance) scaled, before the viewer
    opens; restored afterwards (make_napari_viewer resets napari's settings)."""
    from napari.settings import get_settings

    font = qapp.font()
    scaled = qapp.font()
    scaled.setPointSizeF(font.pointSizeF() * request.param)
    qapp.setFont(scaled)
    settings = get_settings().appearance
    settings.font_size = round(settings.font_size * request.param)
    yield request.param
    qapp.setFont(font)


def _fits(qtbot, w, when: str) -> None:
    """Every text fits, at the dock's width now and at its narrowest, with every section open or not."""
    from qtpy.QtCore import Qt

    dock = w.parentWidget()
    while dock is not None and not hasattr(dock, "setFloating"):  # the QDockWidget napari made
        dock = dock.parentWidget()
    window, width = dock.parentWidget(), dock.width()
    for target in (width, 0):  # 0: as narrow as the dock goes
        window.resizeDocks([dock], [target], Qt.Orientation.Horizontal)
        qtbot.wait(60)
        problems = clipped_texts(w)
        assert not problems, (when, w.width(), problems)
    window.resizeDocks([dock], [width], Qt.Orientation.Horizontal)
    qtbot.wait(60)


def test_every_text_fits_at_default_width_and_larger_font(make_napari_viewer, qtbot, em_small, font_scale,
                                                        tmp_path):
    raw, truth = em_small
    viewer, w = make_widget(make_napari_viewer, raw, show=True)
    assert font_scale == 1.0 or w.minimumWidth() > 380  # the dock grows with the font
    _fits(qtbot, w, "opened")
    opened = [s.isExpanded() for s in w.sections]
    for s in w.sections:
        s.expand(animate=False)
    _fits(qtbot, w, "all sections open")
    for s, was in zip(w.sections, opened):
        if not was:
            s.collapse(animate=False)

    pt, ft, pr = w.pretrain, w.finetune, w.predict
    tiny(pt, steps=100_000)
    pt.panel.start_button.click()
    qtbot.waitUntil(lambda: pt.status.step >= 2, timeout=60_000)
    _fits(qtbot, w, "pretraining")  # the method description used to be clipped while a run was active
    pt.panel.stop_button.click()
    wait_idle(qtbot, pt)
    _fits(qtbot, w, "pretrained")
    assert ft.init.current() is not None  # a model name in the combo boxes: elided, in full on hover
    assert ft.init.combo.full_text_tip().startswith(ft.init.current().describe()) or \
        ft.init.combo.shown_text() == ft.init.current().describe()

    ft.labels.set_layer(viewer.add_labels(np.where(np.arange(4)[:, None, None] == 0, truth, 0).astype(np.uint8),
                                          name="lab"))
    ft.options.steps.setValue(400)
    ft.preview_every = 0.2
    ft.panel.start_button.click()
    qtbot.waitUntil(lambda: ft.status.step >= 3, timeout=60_000)
    _fits(qtbot, w, "fine-tuning")
    ft.panel.stop_button.click()
    wait_idle(qtbot, ft)
    _fits(qtbot, w, "fine-tuned")  # the "Brush values" key used to be clipped after a run

    run(qtbot, pr)
    qtbot.wait(60)
    # the new result is in view: Predict's status line and the next step, section 4, whole
    assert in_view(w, w.sections[3]) and in_view(w, pr.panel.label), (w.verticalScrollBar().value(),)
    _fits(qtbot, w, "predicted")
    viewer.screenshot(str(tmp_path / f"dock_{font_scale}.png"), canvas_only=False)


def test_choosing_a_data_type_in_one_section_chooses_it_in_the_other(make_napari_viewer, qtbot, em_small):
    raw, _ = em_small
    viewer, w = make_widget(make_napari_viewer, raw)
    pt, ft, three, two = w.pretrain, w.finetune, preset_for(3), preset_for(2)

    def choose(section, index: int) -> None:  # as a user picks it: the index changes, then `activated`
        section.preset.setCurrentIndex(index)
        section.preset.activated.emit(index)

    choose(ft, three)
    assert pt.preset.currentIndex() == three and pt.options.values()["ndim"] == 3
    choose(pt, two)
    assert ft.preset.currentIndex() == two and ft.options.values()["ndim"] == 2
