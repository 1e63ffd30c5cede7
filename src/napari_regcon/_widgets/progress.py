"""The run panel: Start / Stop buttons, a progress bar with ETA, and a live loss plot.

It is a view of a :class:`~.state.RunStatus`: the buttons only change ``status.state`` and the
panel redraws from the status' events.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from .state import RunState, RunStatus


def format_duration(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``; empty for unknown values."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class LossPlot(pg.PlotWidget):
    """Loss against step: the raw values faintly, a smoothed curve on top.

    Redrawn at most every ``every`` seconds, in the same event-loop turn as the progress bar,
    so each update costs one repaint of the dock (repaints are not free with software OpenGL).
    """

    every = 1.0

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent, background=None)
        self.setMinimumHeight(110)
        self.setMaximumHeight(150)
        self.setLabel("bottom", "step")
        self.setLabel("left", "loss")
        self.getAxis("left").enableAutoSIPrefix(False)
        self.showGrid(x=True, y=True, alpha=0.2)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        self._raw = self.plot(pen=pg.mkPen((150, 150, 150, 110), width=1))
        self._smooth = self.plot(pen=pg.mkPen((255, 80, 200), width=2))
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.marks: list[pg.InfiniteLine] = []
        self._drawn_at = 0.0

    def clear_points(self) -> None:
        self.steps, self.losses = [], []
        for line in self.marks:
            self.removeItem(line)
        self.marks = []
        self.redraw()

    def mark(self, step: int, label: str) -> None:
        """A dashed vertical line at ``step`` with ``label``: where the curve starts anew (a second network)."""
        line = pg.InfiniteLine(pos=step, angle=90, movable=False,
                               pen=pg.mkPen((120, 170, 255), width=1, style=Qt.PenStyle.DashLine),
                               label=label, labelOpts={"position": 0.85, "color": (120, 170, 255)})
        self.addItem(line)
        self.marks.append(line)

    def add_points(self, points: list[tuple[int, float]]) -> None:
        for step, loss in points:
            if math.isfinite(loss):
                self.steps.append(step)
                self.losses.append(loss)
        if time.monotonic() - self._drawn_at >= self.every:
            self.redraw()

    def redraw(self) -> None:
        self._drawn_at = time.monotonic()
        x = np.asarray(self.steps, float)
        y = np.asarray(self.losses, float)
        self._raw.setData(x, y)
        if len(y):
            alpha = 2.0 / (min(50, max(2, len(y) // 10)) + 1)
            smooth = np.empty_like(y)
            acc = y[0]
            for i, v in enumerate(y):  # exponential moving average; a few thousand points at most
                acc = alpha * v + (1 - alpha) * acc
                smooth[i] = acc
            self._smooth.setData(x, smooth)
        else:
            self._smooth.setData([], [])


class RunPanel(QWidget):
    """Start / Stop, progress bar with ETA and (for training) the loss plot, bound to a RunStatus."""

    def __init__(self, status: RunStatus, start_text: str = "Start", with_plot: bool = True,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.status = status
        self.start_button = QPushButton(start_text)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop at the next step and keep the model trained so far")
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setFormat("")
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.plot = LossPlot() if with_plot else None
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button, 1)
        buttons.addWidget(self.stop_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(buttons)
        lay.addWidget(self.bar)
        lay.addWidget(self.label)
        if self.plot is not None:
            lay.addWidget(self.plot)
        self.start_button.clicked.connect(self._start_clicked)
        self.stop_button.clicked.connect(self._stop_clicked)
        status.events.state.connect(self._on_state)
        status.events.step.connect(self._on_progress)
        status.events.total.connect(self._on_progress)
        status.events.activity.connect(self._on_progress)
        status.events.message.connect(self._on_message)
        self._t_start = 0.0
        self._on_state(status.state)

    # the buttons only flip the state; the section that owns the run reacts to it
    def _start_clicked(self) -> None:
        if self.status.state == RunState.IDLE:
            self.status.state = RunState.RUNNING

    def _stop_clicked(self) -> None:
        if self.status.state == RunState.RUNNING:
            self.status.state = RunState.STOPPING

    def set_start_enabled(self, enabled: bool) -> None:
        """Allow or forbid starting (e.g. while another section runs)."""
        self.start_button.setEnabled(enabled and self.status.state == RunState.IDLE)

    def _on_message(self, text: str, *_: object) -> None:
        self.label.setText(text)

    def _on_state(self, state: RunState, *_: object) -> None:
        running = state != RunState.IDLE
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(state == RunState.RUNNING)
        if state == RunState.RUNNING:
            self._t_start = time.monotonic()
            if self.plot is not None:
                self.plot.clear_points()
        if state == RunState.IDLE and self.plot is not None:
            self.plot.redraw()  # the last points
        if state == RunState.STOPPING:
            self.label.setText("Stopping after the current step…")

    def _on_progress(self, *_: object) -> None:
        total = max(1, self.status.total)
        self.bar.setFormat("%v / %m" if self.status.total else "")
        self.bar.setRange(0, total)
        self.bar.setValue(min(self.status.step, total))
        if self.status.state == RunState.IDLE:
            return
        parts = []
        if math.isfinite(self.status.loss):
            parts.append(f"loss {self.status.loss:.4f}")
        eta = format_duration(self.status.eta)
        if eta:
            parts.append(f"about {eta} left")
        if self.status.activity:
            if not parts and self.status.message:  # before the first step: what the run is, then this
                parts.append(self.status.message)
            parts.append(self.status.activity)
        if parts:
            self.label.setText(" · ".join(parts))
