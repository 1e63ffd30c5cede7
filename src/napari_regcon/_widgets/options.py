"""Form pieces shared by the training sections: training options (with the data type) and network options."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox, QWidget

from napari_regcon.core.errors import RegconError

from .common import hint
from .fitting import Combo
from .layers import guess_channel_axis, layer_array
from .presets import PRESETS, ModelChoice, ModelFields, Preset

__all__ = ["PRESETS", "ChannelAxisCombo", "NetworkOptions", "Preset", "TrainOptions"]


class ChannelAxisCombo(Combo):
    """``auto`` (guessed from the layer), ``none`` or an axis number."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, whole=True)
        self.addItems(["auto", "none", "0", "1", "2", "3"])
        self.setToolTip("Axis of the image layer that holds channels (auto: colour axis of RGB images, "
                        "the small leading axis of 4D images)")

    def resolve(self, layer: Any) -> int | None:
        """The channel axis to use for ``layer``."""
        text = self.currentText()
        if text == "auto":
            return guess_channel_axis(layer)
        if text == "none":
            return None
        axis = int(text)
        ndim = len(layer_array(layer).shape)
        if axis >= ndim:
            raise RegconError(f"The channel axis {axis} does not exist in the layer {layer.name!r} of shape "
                              f"{tuple(layer_array(layer).shape)}.")
        return axis


class TrainOptions(QWidget):
    """Data type, Model (2D/3D), patch size, steps and batch size: the settings most users touch.

    The data type, Model, patch and the network's width and depth follow one rule
    (:func:`~.presets.model_fields`) of two choices: the data type and the *Start from* model
    (:meth:`set_start`). This widget renders what the rule gives, and says why fields are locked.
    The section places :attr:`preset` (the Data type combo) in its own form.
    """

    preset_shown = Signal(int)  # the index of the data type shown, after every change of it or of the fields

    def __init__(self, network: NetworkOptions, pretrain: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.network = network
        self.choice = ModelChoice(pretrain=pretrain)
        self._shown: int | None = None  # the preset whose steps and batch size the fields hold
        self._own_network: tuple[int, int] | None = None  # the user's width and depth while a model fixes them
        self.preset = Combo(whole=True)
        self.preset.addItems([p.label for p in PRESETS])
        self.preset.setToolTip("The kind of data: sets Model, Patch size, Steps and Batch size to what suits it")
        self.ndim = Combo(whole=True)
        self.ndim.addItems(["2D (slice by slice)", "3D (volume)"])
        self.locked_note = hint("")
        self.locked_note.setVisible(False)
        self.patch = QLineEdit()
        self.patch.setToolTip("Side of the square training patch (e.g. 128), or z,y,x for 3D (e.g. 16,64,64)")
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setSingleStep(50)
        self.steps.setToolTip("Training steps: more steps, better model, longer wait (Stop keeps the model so far)")
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setToolTip("Patches per step")
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow(self.locked_note)
        form.addRow("Model", self.ndim)
        form.addRow("Patch size", self.patch)
        form.addRow("Steps", self.steps)
        form.addRow("Batch size", self.batch)
        self.preset.currentIndexChanged.connect(self._on_preset)
        self.ndim.currentIndexChanged.connect(self._on_ndim)
        self.render()

    def set_start(self, bundle: Any) -> None:
        """The *Start from* bundle (None: random initialisation) changed: show what it implies."""
        if bundle is not self.choice.start:
            self.choice.start = bundle
            self.render()

    def _on_preset(self, index: int) -> None:
        self.choice.preset = index
        self.render()

    def _on_ndim(self, index: int) -> None:
        self.choice.choose_ndim(2 if index == 0 else 3)
        self.render()

    def render(self) -> ModelFields:
        """Show the fields derived from the choices; steps and batch size only when the data type changes."""
        f = self.choice.fields()
        for combo, index in ((self.preset, f.preset), (self.ndim, 0 if f.ndim == 2 else 1)):
            combo.blockSignals(True)
            combo.setCurrentIndex(index)
            combo.blockSignals(False)
            combo.setEnabled(not f.locked)
        self.patch.setText(f.patch)
        if f.preset != self._shown:
            self.steps.setValue(f.steps)
            self.batch.setValue(f.batch)
            if self.network is not None and not f.locked:  # a new network gets the data type's width
                self.network.base.setValue(PRESETS[f.preset].base)
            self._shown = f.preset
        self._render_network(f)
        self.locked_note.setText(f.reason)
        self.locked_note.setVisible(f.locked)
        self.preset_shown.emit(f.preset)
        return f

    def _render_network(self, f: ModelFields) -> None:
        """A chosen model shows its width and depth (locked); random initialisation gives the user's back."""
        net = self.network
        if f.base is not None and f.depth is not None:
            if self._own_network is None:
                self._own_network = (net.base.value(), net.depth.value())
            net.base.setValue(f.base)
            net.depth.setValue(f.depth)
        elif self._own_network is not None:
            net.base.setValue(self._own_network[0])
            net.depth.setValue(self._own_network[1])
            self._own_network = None
        net.base.setEnabled(not f.locked)
        net.depth.setEnabled(not f.locked)

    def values(self) -> dict[str, Any]:
        return {"ndim": 2 if self.ndim.currentIndex() == 0 else 3, "patch_size": self.patch.text().strip() or None,
                "steps": self.steps.value(), "batch_size": self.batch.value()}


class NetworkOptions(QWidget):
    """Advanced settings: learning rate, network width and depth, seed, channel axis."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(1e-3)
        self.base = QSpinBox()
        self.base.setRange(2, 128)
        self.base.setValue(16)
        self.base.setToolTip("Features of the first U-Net level (a new network only; a loaded model keeps its own)")
        self.depth = QSpinBox()
        self.depth.setRange(1, 6)
        self.depth.setValue(3)
        self.depth.setToolTip("Number of poolings of the U-Net (a new network only)")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.channel_axis = ChannelAxisCombo()
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.form.addRow("Learning rate", self.lr)
        self.form.addRow("Network width", self.base)
        self.form.addRow("Network depth", self.depth)
        self.form.addRow("Random seed", self.seed)
        self.form.addRow("Channel axis", self.channel_axis)

    def values(self) -> dict[str, Any]:
        return {"lr": self.lr.value(), "base": self.base.value(), "depth": self.depth.value(),
                "seed": self.seed.value()}
