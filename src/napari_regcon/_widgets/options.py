"""Form pieces shared by the training sections: data-type presets, training and network options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox, QWidget

from napari_regcon.core.errors import RegconError

from .layers import guess_channel_axis, layer_array


@dataclass(frozen=True)
class Preset:
    """Sensible defaults for one kind of data."""

    label: str
    ndim: int
    patch: str
    batch: int
    pretrain_steps: int
    finetune_steps: int
    hint: str
    method_params: tuple[tuple[str, str], ...] = ()

    def params_for(self, method: str) -> str:
        """Suggested extra parameters of a pretext method for this kind of data ("" if none)."""
        return dict(self.method_params).get(method, "")


PRESETS = (
    Preset("Electron microscopy (2D slices)", 2, "128", 8, 500, 400,
           "EM stacks are anisotropic (z step >> pixel size): a 2D model on each slice works best."),
    Preset("Two-photon / 3D volume", 3, "16,64,64", 2, 200, 200,
           "Two-photon stacks are volumes: a 3D model with flat 16x64x64 (z, y, x) patches (cut to the "
           "stack when it has fewer planes); "
           "masked image modelling hides bright structures (vessels, cells) more often.",
           (("mim", "mask=intensity"),)),
)


class ChannelAxisCombo(QComboBox):
    """``auto`` (guessed from the layer), ``none`` or an axis number."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
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
    """Model type (2D/3D), patch size, steps and batch size: the settings most users touch."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ndim = QComboBox()
        self.ndim.addItems(["2D (slice by slice)", "3D (volume)"])
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
        form.addRow("Model", self.ndim)
        form.addRow("Patch size", self.patch)
        form.addRow("Steps", self.steps)
        form.addRow("Batch size", self.batch)

    def apply_preset(self, preset: Preset, pretrain: bool) -> None:
        self.ndim.setCurrentIndex(0 if preset.ndim == 2 else 1)
        self.patch.setText(preset.patch)
        self.steps.setValue(preset.pretrain_steps if pretrain else preset.finetune_steps)
        self.batch.setValue(preset.batch)

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
