"""Section 3: tiled prediction of a whole image into new layers, with optional extras."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_regcon.core.errors import RegconError
from napari_regcon.core.predict import PredictOptions

from .common import LayerCombo, ModelPicker, hint, row
from .fitting import Combo, Section, WrapCheckBox
from .jobs import predict_updates
from .layers import labels_kwargs, layer_array, output_geometry, to_layer_data, unwrap
from .options import ChannelAxisCombo
from .progress import RunPanel
from .runner import Runner
from .state import RunState, RunStatus, Session
from .updates import Finished, PredictResult, Update

UNCERTAINTY = {"entropy": "entropy", "margin": "1 − max probability"}


class PredictWidget(QWidget):
    """Predict an image layer with a segmentation model into a new Labels layer (and extras)."""

    done = Signal()

    def __init__(self, viewer: Any, session: Session | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.session = session or Session()
        self.status = RunStatus()
        self.last_prediction: Any = None
        self._pending: list[Callable[[], None]] = []  # result layers still to add, one per event-loop turn
        self._run: dict[str, Any] = {}

        self.inputs = QWidget()
        self.model = ModelPicker(self.session, ("segmentation",))
        self.image = LayerCombo(viewer, ("image",))
        self.probabilities = QCheckBox("Probability layer")
        self.uncertainty = QCheckBox("Uncertainty layer")
        self.uncertainty.setToolTip("Shows where the model is least sure: correct those places first")
        self.uncertainty_kind = Combo()
        for key, text in UNCERTAINTY.items():
            self.uncertainty_kind.addItem(text, key)
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 1_000_000)
        self.min_size.setSuffix(" px")
        self.min_size.setSpecialValueText("off")
        self.min_size.setToolTip("Regions smaller than this are given the class around them (0 = off)")
        self.crf = WrapCheckBox("CRF refinement (smooths along edges; slower)")
        self.crf.setToolTip("A fully connected CRF (GLRP's post-processing): neighbouring pixels of similar grey value "
                            "take the same class. For compact objects (cells, mitochondria, vessels); it erases thin "
                            "structures such as membranes (ISBI membranes: Dice 0.79 -> 0.63).")
        self.tile = QLineEdit()
        self.tile.setPlaceholderText("auto (256 in 2D, 16,128,128 in 3D)")
        self.channel_axis = ChannelAxisCombo()
        adv = QWidget()
        adv_form = QFormLayout(adv)
        adv_form.setContentsMargins(0, 0, 0, 0)
        adv_form.addRow("Tile size", self.tile)
        adv_form.addRow("Channel axis", self.channel_axis)
        advanced = Section("Advanced")
        advanced.addWidget(adv)

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Model", self.model)
        form.addRow("Image", self.image)
        form.addRow("Outputs", self.probabilities)
        form.addRow("", row(self.uncertainty, self.uncertainty_kind))
        form.addRow("Clean up", self.min_size)
        form.addRow("", self.crf)
        inner = QVBoxLayout(self.inputs)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addLayout(form)
        inner.addWidget(advanced)

        self.panel = RunPanel(self.status, "Predict", with_plot=False)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 4, 0, 4)  # inside a Section: its indent is margin enough
        lay.addWidget(hint("Segments the whole image tile by tile in the background into a labels layer "
                           "with the same class values as your training labels. Predicting the image again "
                           "updates that layer, unless you painted corrections on it."))
        lay.addWidget(self.inputs)
        lay.addWidget(self.panel)
        self.status.events.state.connect(lambda s: self.inputs.setEnabled(s == RunState.IDLE))
        self.runner = Runner(self.status, self.session, self._prepare, self._on_update, "prediction")

    def _prepare(self, stop: threading.Event) -> tuple:
        entry, img = self.model.current(), self.image.layer()
        if entry is None:
            raise RegconError("Choose a segmentation model: fine-tune one in step 2, or Load… a saved one.")
        if img is None:
            raise RegconError("Choose the image layer to predict.")
        ca = entry.info.channel_axis(self.channel_axis.resolve(img))
        options = PredictOptions(channel_axis=ca, probabilities=self.probabilities.isChecked(),
                                 uncertainty=self.uncertainty_kind.currentData() if self.uncertainty.isChecked() else None,
                                 min_size=self.min_size.value(), crf=self.crf.isChecked(),
                                 tile=self.tile.text().strip() or None)
        self._run = {"image": img, "channel_axis": ca, "model": entry.name}
        return predict_updates, (entry.bundle, layer_array(img), options, stop)

    def _on_update(self, upd: Update) -> None:
        if isinstance(upd, Finished) and isinstance(upd.result, PredictResult):
            self.status.message = "Adding the result layers…"
            self._add_layers(upd.result)

    @property
    def adding_layers(self) -> bool:
        """True while the result layers of the last prediction are still being added."""
        return bool(self._pending)

    def _add_layers(self, res: PredictResult) -> None:
        """Put the result layers in the viewer one per turn of the event loop, the prediction last.

        Creating a napari layer costs 100-150 ms of the main thread (controls, visuals, first draw);
        adding three in one go froze the viewer for 0.3-0.5 s, one at a time it repaints between them.
        A layer of an earlier prediction of the same image is updated in place instead (2-10 ms): the
        correction loop predicts again every round, and a pile of stale layers helps nobody.
        """
        run = self._run
        img, ca = run["image"], run["channel_axis"]
        names = {v: n for v, n in zip(res.class_values, res.class_names)}
        names.update({v: f"class {v}" for v in res.class_values if v not in names})
        geom = output_geometry(img, ca)
        steps: list[Callable[[], None]] = []
        if res.probabilities is not None:
            shown = range(1, len(res.class_values)) if len(res.class_values) == 2 else range(len(res.class_values))
            for k in shown:
                name = f"P({names[res.class_values[k]]})"
                steps.append(partial(self._put_image, to_layer_data(res.probabilities[k], img, ca), f"p:{name}", img,
                                     name=name, colormap="magma", contrast_limits=(0.0, 1.0), visible=False, **geom))
        if res.uncertainty is not None:
            steps.append(partial(self._put_image, to_layer_data(res.uncertainty, img, ca), "uncertainty", img,
                                 name=f"{img.name} uncertainty", colormap="inferno", contrast_limits=(0.0, 1.0),
                                 opacity=0.8, visible=False, **geom))
        steps.append(partial(self._add_prediction, res, names, img, ca, run["model"]))
        self._pending = steps
        self._next_layer()

    def _next_layer(self) -> None:
        """Put the next pending layer in; schedule the one after it for the next turn of the event loop."""
        if not self._pending:
            return
        step = self._pending.pop(0)
        try:
            step()
        except Exception as err:  # noqa: BLE001 - a broken result must not break the viewer
            self._pending = []
            self.runner.result_failed(err)
            return
        if self._pending:
            QTimer.singleShot(0, self._next_layer)

    def _earlier(self, kind: str, img: Any, shape: tuple[int, ...]) -> Any | None:
        """The layer of an earlier prediction of ``img`` to update in place, or None to add a new one.

        A prediction qualifies only while nobody has painted on it: corrections stay in their layer.
        """
        for layer in reversed(list(self.viewer.layers)):
            meta = layer.metadata
            if meta.get("regcon_result") != kind or meta.get("regcon_image") != img.name:
                continue
            if tuple(layer.data.shape) != tuple(shape):
                continue
            if kind == "prediction":
                original = meta.get("regcon_original")
                if original is None or not np.array_equal(np.asarray(layer.data), original):
                    continue
            return layer
        return None

    @staticmethod
    def _place(layer: Any, scale: tuple, translate: tuple) -> None:
        """Give an updated layer the image's geometry (only where it changed: each set redraws)."""
        if tuple(layer.scale) != tuple(scale):
            layer.scale = scale
        if tuple(layer.translate) != tuple(translate):
            layer.translate = translate

    def _put(self, add: Any, data: np.ndarray, kind: str, img: Any, **kwargs: Any) -> tuple[Any, bool]:
        """Update the ``kind`` layer of an earlier prediction of ``img``, or ``add`` a new one;
        (the layer, whether it was updated)."""
        layer = self._earlier(kind, img, data.shape)
        if layer is None:
            layer = unwrap(add(data, **kwargs))
            layer.metadata.update(regcon_result=kind, regcon_image=img.name)
            return layer, False
        layer.data = data
        self._place(layer, kwargs["scale"], kwargs["translate"])
        return layer, True

    def _put_image(self, data: np.ndarray, kind: str, img: Any, **kwargs: Any) -> Any:
        """Update the image layer of an earlier prediction of ``img``, or add a new one."""
        return self._put(self.viewer.add_image, data, kind, img, **kwargs)[0]

    def _add_prediction(self, res: PredictResult, names: dict, img: Any, ca: int | None, model: str) -> None:
        labels = to_layer_data(res.labels, img, ca)
        kwargs = labels_kwargs(names, img, ca)
        layer, updated = self._put(self.viewer.add_labels, labels, "prediction", img,
                                   name=f"{img.name} prediction", opacity=0.6, **kwargs)
        verb = "updated" if updated else "added"
        if updated:
            layer._reset_history()  # its undo steps were of the data just replaced
            if layer.metadata.get("regcon_classes") != names:  # each set redraws: only when the classes changed
                layer.colormap = kwargs["colormap"]
                if "features" in kwargs:
                    layer.features = kwargs["features"]
            layer.visible = True
        # the untouched prediction, so the Correct section can tell what the user changed
        layer.metadata["regcon_original"] = np.array(labels, copy=True)
        layer.metadata["regcon_model"] = model
        layer.metadata["regcon_classes"] = dict(names)
        self.last_prediction = layer
        extra = " (the probability/uncertainty layers are hidden: tick their eye to show them)" \
            if res.probabilities is not None or res.uncertainty is not None else ""
        note = self.runner.note
        self.status.message = " ".join(filter(None, ["Done: " + ", ".join([f"prediction layer {verb}", *res.notes])
                                                     + ".", note]))
        show_info(f"Prediction of '{img.name}' {verb} as '{layer.name}'{extra}.")
        self.done.emit()
