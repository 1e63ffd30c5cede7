"""Section 1: self-supervised pretraining on unlabeled image layers."""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from napari.utils.notifications import show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFormLayout, QLabel, QLineEdit, QVBoxLayout, QWidget

from napari_regcon.core.bundle import as_bundle
from napari_regcon.core.device import describe_device, get_device
from napari_regcon.core.errors import RegconError
from napari_regcon.core.options import PretrainOptions, parse_params
from napari_regcon.core.precision import precision_name, resolve_precision
from napari_regcon.core.pretext import PRETEXTS, with_voxel_size

from .common import LayerChecklist, ModelPicker, hint, warn_thin_isotropic
from .fitting import Combo, Section
from .jobs import cpu_threads, pretrain_updates
from .layers import layer_array, voxel_size_of
from .options import PRESETS, NetworkOptions, TrainOptions
from .progress import RunPanel
from .runner import Runner
from .state import ModelEntry, RunState, RunStatus, Session
from .updates import Finished, StepUpdate, Update


def device_text() -> str:
    """``Device: GPU: <name>``, or the CPU threads a run uses (one core is left to the viewer), and the
    arithmetic of its runs (bf16 on CPUs with bf16 units, fp32 elsewhere)."""
    try:
        device = get_device("auto")
    except Exception:  # noqa: BLE001 - informative only
        return "Device: CPU"
    arithmetic = precision_name(resolve_precision("auto", device))  # what a run uses (the bundle stays fp32)
    if device.type == "cpu":
        cores = os.cpu_count() or 1
        return (f"Device: CPU (training uses {cpu_threads()} of {cores} cores; the rest keeps the viewer smooth), "
                f"{arithmetic} arithmetic")
    return f"Device: {describe_device(device)}, {arithmetic} arithmetic"


def method_text(description: str) -> str:
    """A pretext's description for the GUI: ``--mask intensity`` becomes ``mask=intensity``."""
    return re.sub(r"--([A-Za-z_]+) ", r"\1=", description)


class PretrainWidget(QWidget):
    """Pretrain a U-Net with a self-supervised method on one or more unlabeled images."""

    done = Signal()

    def __init__(self, viewer: Any, session: Session | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.session = session or Session()
        self.status = RunStatus()

        self.inputs = QWidget()
        self.images = LayerChecklist(viewer, ("image",), check_new=True)
        self.images.setToolTip("Unlabeled images to learn from (no labels needed); tick one or more")
        self.network = NetworkOptions()
        self.options = TrainOptions(self.network, pretrain=True)
        self.preset = self.options.preset
        self.preset_hint = hint("")
        self.method = Combo(whole=True)
        self.method_hint = hint("")
        self.method_params = QLineEdit()
        self.method_params.setPlaceholderText("e.g. ratio=0.6, patch=16")
        self._suggested = ""
        self.network.form.addRow("Method parameters", self.method_params)
        advanced = Section("Advanced")
        advanced.addWidget(self.network)

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Unlabeled images", self.images)
        form.addRow("Data type", self.preset)
        form.addRow(self.preset_hint)
        form.addRow("Method", self.method)
        form.addRow(self.method_hint)
        inner = QVBoxLayout(self.inputs)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addLayout(form)
        inner.addWidget(self.options)
        inner.addWidget(advanced)

        self.panel = RunPanel(self.status, "Start pretraining")
        self.device = QLabel(device_text())
        self.device.setWordWrap(True)
        self.saver = ModelPicker(self.session, ("pretrained",))
        self.saver.setToolTip("The pretrained model: it appears in Fine-tune under 'Start from'")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 4, 0, 4)  # inside a Section: its indent is margin enough
        lay.addWidget(hint("Optional. Learns what your images look like without any labels, so that "
                           "fine-tuning needs fewer painted pixels. Pick the images, the method, and Start."))
        lay.addWidget(self.inputs)
        lay.addWidget(self.device)
        lay.addWidget(self.panel)
        lay.addWidget(QLabel("Pretrained model"))
        lay.addWidget(self.saver)

        self.options.preset_shown.connect(self._on_preset)
        self.method.currentIndexChanged.connect(self._on_method)
        self.status.events.state.connect(lambda s: self.inputs.setEnabled(s == RunState.IDLE))
        self.runner = Runner(self.status, self.session, self._prepare, self._on_update, "pretraining")
        self.refresh_methods()
        self._on_preset(self.preset.currentIndex())

    def refresh_methods(self) -> None:
        """List the pretext methods registered now (other methods may have been added)."""
        current = self.method.currentData()
        self.method.blockSignals(True)
        self.method.clear()
        for name, cls in sorted(PRETEXTS.items(), key=lambda kv: (kv[0] != "mim", kv[0])):
            self.method.addItem(name, name)
            self.method.setItemData(self.method.count() - 1, method_text(cls.description or name),
                                 Qt.ItemDataRole.ToolTipRole)
        idx = self.method.findData(current) if current is not None else -1
        self.method.setCurrentIndex(max(idx, 0))
        self.method.blockSignals(False)
        self._on_method()

    def showEvent(self, event: Any) -> None:
        if self.status.state == RunState.IDLE and self.method.count() != len(PRETEXTS):
            self.refresh_methods()
        super().showEvent(event)

    def _on_preset(self, index: int) -> None:
        """The data type shown changed (chosen, or following Model): its hint and method parameters."""
        self.preset_hint.setText(PRESETS[index].hint)
        self._suggest_params()

    def _on_method(self, *_: Any) -> None:
        name = self.method.currentData()
        cls = PRETEXTS.get(name) if name else None
        self.method_hint.setText(method_text(cls.description) if cls is not None and cls.description else "")
        self._suggest_params()

    def _suggest_params(self) -> None:
        """Fill the method parameters with the preset's suggestion unless the user typed their own."""
        if self.method_params.text().strip() not in ("", self._suggested):
            return
        self._suggested = PRESETS[self.preset.currentIndex()].params_for(self.method.currentData() or "")
        self.method_params.setText(self._suggested)

    def _prepare(self, stop: threading.Event) -> tuple:
        layers = self.images.checked_layers()
        if not layers:
            raise RegconError("Tick at least one image layer to pretrain on.")
        method = self.method.currentData()
        if method not in PRETEXTS:
            raise RegconError(f"The method {method!r} is no longer available; choose another one.")
        channel_axis = self.network.channel_axis.resolve(layers[0])
        form = self.options.values()
        if form["ndim"] == 3:
            warn_thin_isotropic(self.session, layers, channel_axis)
        voxel = voxel_size_of(layers[0], channel_axis)
        extra = with_voxel_size(method, parse_params(self.method_params.text()), form["ndim"], voxel)
        options = PretrainOptions(method=method, channel_axis=channel_axis, method_params=extra, voxel_size=voxel,
                                  **form, **self.network.values())
        return pretrain_updates, ([layer_array(ly) for ly in layers], options, stop)

    def _on_update(self, upd: Update) -> None:
        if isinstance(upd, StepUpdate) and self.panel.plot is not None:
            self.panel.plot.add_points(upd.points)
        elif isinstance(upd, Finished) and upd.result is not None:
            bundle = upd.result
            pretext = as_bundle(bundle).pretext
            method = pretext.method or "?"
            steps = self.status.step if pretext.steps is None else pretext.steps
            if upd.cancelled and not steps:
                self.status.message = "Stopped before the first step; no model was kept."
                return
            name = f"pretrained {method}, {steps} steps" + (" (stopped)" if upd.cancelled else "")
            self.session.add(ModelEntry(name, bundle))
            self.status.message = (("Stopped early; " if upd.cancelled else "Done; ")
                                   + "the model is ready under Fine-tune > Start from (Save… keeps it in a file).")
            show_info(f"Pretraining {'stopped' if upd.cancelled else 'finished'}: {name}.")
            self.done.emit()
