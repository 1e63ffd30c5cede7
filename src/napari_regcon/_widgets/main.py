"""The dock widget: the four steps as collapsible sections that read top to bottom."""

from __future__ import annotations

import threading
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFormLayout, QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget
from superqt import QCollapsible

from .common import hint
from .correct import CorrectWidget
from .finetune import FinetuneWidget
from .jobs import warm_up
from .predict import PredictWidget
from .pretrain import PretrainWidget
from .state import RunState, Session


class RegconWidget(QScrollArea):
    """Pretrain → paint and fine-tune → predict → correct and retrain, in one dock widget."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = Session()
        self.pretrain = PretrainWidget(napari_viewer, self.session)
        self.finetune = FinetuneWidget(napari_viewer, self.session)
        self.predict = PredictWidget(napari_viewer, self.session)
        self.correct = CorrectWidget(napari_viewer, self.session)
        titles = ["1  Pretrain on unlabeled images (optional)", "2  Paint labels and fine-tune",
                  "3  Predict", "4  Correct and retrain"]
        steps = [self.pretrain, self.finetune, self.predict, self.correct]
        self.sections: list[QCollapsible] = []
        body = QWidget()
        lay = QVBoxLayout(body)
        title = QLabel("<b>Label-efficient segmentation</b>")
        lay.addWidget(title)
        lay.addWidget(hint("Work through the steps from top to bottom. Training runs in the background: "
                           "you can keep browsing and painting while it runs."))
        for text, widget in zip(titles, steps):
            section = QCollapsible(text)
            section.addWidget(widget)
            lay.addWidget(section)
            self.sections.append(section)
        lay.addStretch(1)
        self.setWidget(body)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMinimumWidth(380)
        for i in (0, 1):
            self.sections[i].expand(animate=False)
        # a narrow dock must not cut the form: combo boxes shrink and elide their text
        for combo in body.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        for form in body.findChildren(QFormLayout):
            form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)

        self.pretrain.done.connect(lambda: self._open(1))
        self.finetune.done.connect(lambda: self._open(2))
        self.predict.done.connect(self._after_predict)
        self.correct.done.connect(lambda: self._open(1))
        self.session.busy_changed.connect(self._on_busy)
        self.destroyed.connect(_on_destroyed(self.session, [self.pretrain.runner, self.finetune.runner,
                                                            self.predict.runner]))
        threading.Thread(target=warm_up, name="napari-regcon warm-up", daemon=True).start()

    def _open(self, index: int) -> None:
        section = self.sections[index]
        if not section.isExpanded():
            section.expand(animate=False)
        self.ensureWidgetVisible(section)

    def _after_predict(self) -> None:
        layer = self.predict.last_prediction
        if layer is not None:
            self.correct.select_prediction(layer)
            lab = self.finetune.labels.layer()
            if lab is not None:
                self.correct.labels.set_layer(lab)
        self._open(3)

    def _on_busy(self, busy: bool) -> None:
        """One run at a time: the other sections cannot start while one runs."""
        for w in (self.pretrain, self.finetune, self.predict):
            if w.status.state == RunState.IDLE:
                w.panel.set_start_enabled(not busy)

    def stop_all(self) -> None:
        """Ask any active run to stop (e.g. before closing)."""
        for w in (self.pretrain, self.finetune, self.predict):
            w.runner.stop()


def _on_destroyed(session: Session, runners: list[Any]) -> Any:
    """A callback for ``destroyed`` (a closure, since the widget is gone by then): the session's
    signals no longer reach deleted views, and active runs stop at their next step."""

    def callback(*_: Any) -> None:
        for signal in (session.models_changed, session.busy_changed, session.retrain_requested):
            signal.disconnect()
        for runner in runners:
            runner.detach()

    return callback
