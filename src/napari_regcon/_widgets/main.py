"""The dock widget: the four steps as collapsible sections that read top to bottom."""

from __future__ import annotations

import threading
from typing import Any

from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QFormLayout,
    QFrame,
    QLabel,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from .common import hint
from .correct import CorrectWidget
from .finetune import FinetuneWidget
from .fitting import Section
from .jobs import warm_up
from .layers import in_viewer, move_to_top
from .predict import PredictWidget
from .pretrain import PretrainWidget
from .state import RunState, Session

LAYOUT_REQUEST = getattr(QEvent.Type.LayoutRequest, "value", QEvent.Type.LayoutRequest)


class RegconWidget(QScrollArea):
    """Pretrain → paint and fine-tune → predict → correct and retrain, in one dock widget."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = Session()
        self._pending_reveal: tuple[QWidget, QWidget | None] | None = None
        self._reveal_again = QTimer(self)  # see _open
        self._reveal_again.setSingleShot(True)
        self._reveal_again.timeout.connect(self._reveal_pending)
        self.pretrain = PretrainWidget(napari_viewer, self.session)
        self.finetune = FinetuneWidget(napari_viewer, self.session)
        self.predict = PredictWidget(napari_viewer, self.session)
        self.correct = CorrectWidget(napari_viewer, self.session)
        titles = ["1  Pretrain (optional)", "2  Paint and fine-tune", "3  Predict", "4  Correct and retrain"]
        steps = [self.pretrain, self.finetune, self.predict, self.correct]
        self.sections: list[Section] = []
        body = QWidget()
        lay = QVBoxLayout(body)
        title = QLabel("<b>Label-efficient segmentation</b>")
        title.setWordWrap(True)
        lay.addWidget(title)
        lay.addWidget(hint("Work through the steps from top to bottom. Training runs in the background: "
                           "you can keep browsing and painting while it runs."))
        for text, widget in zip(titles, steps):
            section = Section(text)
            section.addWidget(widget)
            lay.addWidget(section)
            self.sections.append(section)
        lay.addStretch(1)
        self.setWidget(body)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._fit_font()
        for i in (0, 1):
            self.sections[i].expand(animate=False)
        # a narrow dock must not cut the form: combo boxes elide (fitting.Combo), long rows wrap
        for form in body.findChildren(QFormLayout):
            form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)

        self.pretrain.done.connect(lambda: self._open(1))
        self.finetune.done.connect(lambda: self._open(2))
        self.predict.done.connect(self._after_predict)
        # the data type is the user's description of the data: choosing it in one section chooses it in the other
        self.pretrain.preset.activated.connect(lambda i: _follow_data_type(self.finetune, i))
        self.finetune.preset.activated.connect(lambda i: _follow_data_type(self.pretrain, i))
        self.correct.done.connect(lambda: self._open(1))
        self.session.busy_changed.connect(self._on_busy)
        self.destroyed.connect(_on_destroyed(self.session, [self.pretrain.runner, self.finetune.runner,
                                                            self.predict.runner]))
        threading.Thread(target=warm_up, name="napari-regcon warm-up", daemon=True).start()

    def _fit_font(self) -> None:
        """The dock is at least ~46 characters wide (380 px at napari's default font), so that a larger
        font does not squeeze the form."""
        self.setMinimumWidth(max(380, 46 * self.fontMetrics().averageCharWidth()))

    def changeEvent(self, e: Any) -> None:
        if e.type() == QEvent.Type.FontChange:
            self._fit_font()
        super().changeEvent(e)

    def _open(self, index: int, after: QWidget | None = None) -> None:
        """Open a section and scroll it into view once the layout has its new height (``after``: a
        widget above it that should stay in view too when there is room, e.g. a result)."""
        section = self.sections[index]
        if not section.isExpanded():
            section.expand(animate=False)
        QTimer.singleShot(0, lambda: self.reveal(section, after))
        # once more when wrapped labels above have taken their new height (they may take a few event-loop
        # turns, e.g. the brush-values key after a prediction); a child timer dies with the widget
        self._pending_reveal = (section, after)
        self._reveal_again.start(30)

    def _reveal_pending(self) -> None:
        if self._pending_reveal is not None:
            self.reveal(*self._pending_reveal)

    def reveal(self, widget: QWidget, after: QWidget | None = None) -> None:
        """Scroll as little as possible so that ``widget`` is wholly in view (from ``after``'s top when
        that fits too); a widget taller than the dock shows its top."""
        for _ in range(4):  # the pending layout passes, inner to outer: the dock's height after the change
            QApplication.sendPostedEvents(None, LAYOUT_REQUEST)
        body, bar, height = self.widget(), self.verticalScrollBar(), self.viewport().height()
        top = widget.mapTo(body, widget.rect().topLeft()).y()
        bottom = top + widget.height()
        if after is not None:
            first = after.mapTo(body, after.rect().topLeft()).y()
            if bottom - first <= height:
                top = first
        if bottom - top > height:
            bar.setValue(top)
        else:
            bar.setValue(min(max(bar.value(), bottom - height), top))

    def _after_predict(self) -> None:
        """The new prediction is what the user looks at: the live preview it supersedes is hidden, and the
        training labels go on top of it, selected, so correction strokes show where they are painted."""
        layer = self.predict.last_prediction
        if layer is not None:
            self.correct.select_prediction(layer)
            preview = self.finetune.preview_layer
            if preview is not None and in_viewer(self.viewer, preview):
                preview.visible = False
            lab = self.finetune.labels.layer()
            if lab is not None:
                self.correct.labels.set_layer(lab)
                if in_viewer(self.viewer, lab) and lab.data.shape == layer.data.shape:
                    move_to_top(self.viewer, lab, keep_active=False)
                    self.viewer.layers.selection.active = lab
        self._open(3, after=self.predict.panel.label)  # the result's status line, and the next step

    def _on_busy(self, busy: bool) -> None:
        """One run at a time: the other sections cannot start while one runs."""
        for w in (self.pretrain, self.finetune, self.predict):
            if w.status.state == RunState.IDLE:
                w.panel.set_start_enabled(not busy)

    def stop_all(self) -> None:
        """Ask any active run to stop (e.g. before closing)."""
        for w in (self.pretrain, self.finetune, self.predict):
            w.runner.stop()


def _follow_data_type(section: Any, index: int) -> None:
    """Show data type ``index`` in ``section`` too, unless a chosen model fixes it there or it is running."""
    if section.preset.isEnabled() and section.status.state == RunState.IDLE and section.preset.currentIndex() != index:
        section.preset.setCurrentIndex(index)


def _on_destroyed(session: Session, runners: list[Any]) -> Any:
    """A callback for ``destroyed`` (a closure, since the widget is gone by then): the session's
    signals no longer reach deleted views, and active runs stop at their next step."""

    def callback(*_: Any) -> None:
        for signal in (session.models_changed, session.busy_changed, session.retrain_requested):
            signal.disconnect()
        for runner in runners:
            runner.detach()

    return callback
