"""Section 4: bring corrected predictions into the training labels, then fine-tune again.

The user's labels change only through these buttons (each an explicit action, undo-able with
Ctrl-Z on the labels layer), and by default only where they are 0 (not annotated).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFormLayout, QPushButton, QVBoxLayout, QWidget

from .common import LayerCombo, hint
from .fitting import WrapCheckBox
from .layers import fill_labels, plane_index
from .state import Session


class CorrectWidget(QWidget):
    """Accept the prediction of a slice, or the user's corrections of it, into the training labels."""

    done = Signal()

    def __init__(self, viewer: Any, session: Session | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.session = session or Session()
        self.labels = LayerCombo(viewer, ("labels",))
        self.labels.setToolTip("Your training labels (the layer you painted)")
        self.prediction = LayerCombo(viewer, ("labels",))
        self.prediction.setToolTip("A prediction layer made in step 3 (you may paint corrections on it)")
        self.overwrite = WrapCheckBox("Also replace pixels I labelled myself")
        self.overwrite.setToolTip("Off: only pixels that are 0 (not annotated) in your labels are filled")
        self.accept_slice = QPushButton("Accept this slice's prediction")
        self.accept_slice.setToolTip("Copy the prediction of the slice in view into your training labels "
                                     "(only where they are 0 unless the box above is ticked)")
        self.copy_corrections = QPushButton("Copy my corrections")
        self.copy_corrections.setToolTip("Pixels you repainted on the prediction layer go into the training labels")
        self.retrain_button = QPushButton("Fine-tune again")
        self.retrain_button.setToolTip("Train step 2 again, from the current model, on the training labels")

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Training labels", self.labels)
        form.addRow("Prediction", self.prediction)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 4, 0, 4)  # inside a Section: its indent is margin enough
        lay.addWidget(hint("Membranes, cells: accept this slice's prediction, paint over what is wrong, then "
                           "Fine-tune again. Thin, sparse objects (vessels): only paint a stroke of the right class "
                           "through each wrong region. The rest of the prediction stays as it was. Ctrl-Z undoes an "
                           "accept or a copy."))
        lay.addLayout(form)
        lay.addWidget(self.overwrite)
        lay.addWidget(self.accept_slice)
        lay.addWidget(self.copy_corrections)
        lay.addWidget(self.retrain_button)
        self.accept_slice.clicked.connect(self.accept_current_slice)
        self.copy_corrections.clicked.connect(self.copy_user_corrections)
        self.retrain_button.clicked.connect(self.retrain)
        self.session.busy_changed.connect(lambda busy: self.retrain_button.setEnabled(not busy))

    def select_prediction(self, layer: Any) -> None:
        """Point the section at a new prediction layer (called after step 3)."""
        self.prediction.set_layer(layer)

    def _pair(self) -> tuple[Any, Any] | None:
        lab, pred = self.labels.layer(), self.prediction.layer()
        if lab is None or pred is None:
            show_error("Choose your training labels layer and a prediction layer.")
            return None
        if lab is pred:
            show_error("The training labels and the prediction must be two different layers.")
            return None
        if tuple(lab.data.shape) != tuple(pred.data.shape):
            show_error(f"The prediction '{pred.name}' has shape {tuple(pred.data.shape)} but the labels "
                       f"'{lab.name}' have shape {tuple(lab.data.shape)}; predict the image these labels belong to.")
            return None
        return lab, pred

    def accept_current_slice(self) -> int:
        """Copy the prediction of the slice in view into the labels (only unannotated pixels by default)."""
        pair = self._pair()
        if pair is None:
            return 0
        lab, pred = pair
        index = plane_index(lab, self.viewer)
        source = np.asarray(pred.data[index] if index else pred.data)
        n = fill_labels(lab, source, np.ones(source.shape, bool), self.overwrite.isChecked(), index)
        where = f"slice {index[0]}" if index else "the image"  # Z leads (ZYX, or ZCYX for a ZCYX image)
        kept = "" if self.overwrite.isChecked() else " (your own labels were kept)"
        show_info(f"{n} pixels of {where} were copied from '{pred.name}' into '{lab.name}'{kept}.")
        return n

    def copy_user_corrections(self) -> int:
        """Copy the pixels the user repainted on the prediction layer into the labels."""
        pair = self._pair()
        if pair is None:
            return 0
        lab, pred = pair
        original = pred.metadata.get("regcon_original")
        if original is None or original.shape != pred.data.shape:
            show_error(f"'{pred.name}' was not predicted in this session, so its corrections cannot be told "
                       "apart; use 'Accept this slice's prediction' instead.")
            return 0
        changed = np.asarray(pred.data) != original
        n = fill_labels(lab, np.asarray(pred.data), changed, self.overwrite.isChecked())
        if not changed.any():
            show_info(f"No corrections found: paint the right class on '{pred.name}' where it is wrong, then copy.")
        else:
            show_info(f"{n} corrected pixels were copied into '{lab.name}'.")
        return n

    def retrain(self) -> None:
        """Ask the Fine-tune section to train again from the newest model on these labels."""
        if self.session.latest("segmentation") is None:
            show_error("There is no fine-tuned model yet: run step 2 first.")
            return
        self.session.retrain_requested.emit(self.labels.layer())
        self.done.emit()
