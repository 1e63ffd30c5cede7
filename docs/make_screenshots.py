"""Make the screenshots of docs/user_guide.md by driving the real dock widget on the sample.

Run under a display:  ``xvfb-run -a python docs/make_screenshots.py``  (a few minutes on 2 CPU cores)

Every step is what a user does: open the sample, open the widget, pretrain, create a labels
layer and paint a few strokes (simulated from the sample's ground truth, slice 0 only), fine-tune
with the live preview, predict with an uncertainty layer, then accept a slice and retrain. The
PNGs go to docs/images/guide_*.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.morphology import disk, skeletonize

OUT = Path(__file__).resolve().parent / "images"


def scribbles(membrane: np.ndarray, seed: int = 0) -> np.ndarray:
    """Brush-like strokes a person might paint on one slice: 1 = background, 2 = membrane."""
    rng = np.random.default_rng(seed)
    out = np.zeros(membrane.shape, np.uint8)
    skel = skeletonize(membrane > 0)
    ys, xs = np.nonzero(skel)
    for i in rng.choice(len(ys), 14, replace=False):  # short strokes along membranes
        win = (slice(max(0, ys[i] - 14), ys[i] + 14), slice(max(0, xs[i] - 14), xs[i] + 14))
        stroke = ndimage.binary_dilation(skel[win], disk(1))
        out[win][stroke & (membrane[win] > 0)] = 2
    inside = ndimage.distance_transform_edt(membrane == 0)
    peaks = np.argwhere(inside > 9)
    for y, x in peaks[rng.choice(len(peaks), 16, replace=False)]:  # dabs inside cells
        yy, xx = np.ogrid[:membrane.shape[0], :membrane.shape[1]]
        blob = (yy - y) ** 2 + (xx - x) ** 2 <= 16
        out[blob & (membrane == 0) & (out == 0)] = 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--finetune-steps", type=int, default=250)
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_regcon._widgets import RunState

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 960)
    app = QApplication.instance()

    def spin(seconds: float, until: Any = None) -> None:
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end and not (until is not None and until()):
            app.processEvents()
            time.sleep(0.005)

    def shot(name: str) -> None:
        spin(0.8)
        viewer.screenshot(str(OUT / f"guide_{name}.png"), canvas_only=False)
        print("wrote", OUT / f"guide_{name}.png", flush=True)

    def show(index: int) -> None:
        for i, section in enumerate(widget.sections):
            if i == index:
                section.expand(animate=False)
            else:
                section.collapse(animate=False)
        spin(0.3)
        top = widget.sections[index].geometry().top() if index else 0
        widget.verticalScrollBar().setValue(max(0, top - 4))
        spin(0.2)

    def wait_idle(section: Any) -> None:
        spin(3600, until=lambda: section.status.state == RunState.IDLE and not section.runner.running)

    # 1. the sample (File > Open Sample > napari-regcon) and the widget (Plugins menu)
    viewer.open_sample("napari-regcon", "isbi2012")
    image, truth_layer = viewer.layers["ISBI 2012 EM"], viewer.layers["membranes (ground truth)"]
    truth = np.asarray(truth_layer.data)
    viewer.layers.remove(truth_layer)  # a user starts without ground truth
    _, widget = viewer.window.add_plugin_dock_widget("napari-regcon", "Label-efficient segmentation")
    viewer.dims.set_current_step(0, 0)
    show(0)
    shot("1_open")

    # 2. pretrain (masked image modelling) on the unlabeled stack
    pt = widget.pretrain
    pt.options.steps.setValue(args.pretrain_steps)
    pt.panel.start_button.click()
    spin(3600, until=lambda: pt.status.step >= args.pretrain_steps * 0.6)
    shot("2_pretrain_running")
    wait_idle(pt)

    # 3. a labels layer with named classes, and a few strokes on slice 0
    show(1)
    ft = widget.finetune
    ft.classes.setText("background, membrane")
    labels = ft.create_labels_layer()
    labels.data[0] = scribbles(truth[0])
    labels.refresh()
    shot("3_paint")

    # 4. fine-tune from the pretrained model, with the live preview of the slice in view
    ft.options.steps.setValue(args.finetune_steps)
    viewer.dims.set_current_step(0, 4)  # look at a slice without labels
    ft.panel.start_button.click()
    # mid-run, once the preview shows something; a strokes run may end by itself before 60 % of its steps
    spin(3600, until=lambda: (ft.status.step >= args.finetune_steps * 0.3 and ft.preview_layer is not None)
         or (ft.status.state == RunState.IDLE and not ft.runner.running))
    shot("4_finetune_preview")
    wait_idle(ft)
    ft.preview_layer.visible = False

    # 5. predict the whole stack, with an uncertainty layer
    show(2)
    pr = widget.predict
    pr.uncertainty.setChecked(True)
    pr.min_size.setValue(20)
    pr.panel.start_button.click()
    wait_idle(pr)
    shot("5_predict")
    unc = viewer.layers[f"{image.name} uncertainty"]
    pred = pr.last_prediction
    unc.visible, pred.visible = True, False
    viewer.layers.selection.active = unc
    shot("6_uncertainty")
    unc.visible, pred.visible = False, True

    # 6. accept the prediction of slice 4 into the labels, then retrain from the current model
    show(3)
    viewer.dims.set_current_step(0, 4)
    widget.correct.accept_current_slice()
    pred.visible = False
    viewer.layers.selection.active = labels
    shot("7_correct")
    viewer.close()


if __name__ == "__main__":
    main()
