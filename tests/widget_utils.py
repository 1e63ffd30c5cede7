"""Helpers of the GUI tests (tests/test_widgets_*.py): tiny settings, waiting, notifications."""

from __future__ import annotations

from typing import Any

from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_regcon._widgets import RegconWidget, RunState

EM_SCALE = (50.0, 4.0, 4.0)


def make_widget(make_napari_viewer: Any, image: Any = None, show: bool = False, **image_kw: Any
                ) -> tuple[Any, RegconWidget]:
    """A viewer with (optionally) an image layer and the dock widget opened as napari opens it
    from the Plugins menu (through the manifest, so the widget gets napari's viewer proxy);
    ``show`` puts the window on the (virtual) screen, for mouse events on the canvas."""
    viewer = make_napari_viewer(show=show)
    if image is not None:
        image_kw.setdefault("name", "em")
        viewer.add_image(image, **image_kw)
    _, widget = viewer.window.add_plugin_dock_widget("napari-regcon", "Label-efficient segmentation")
    assert isinstance(widget, RegconWidget)
    return viewer, widget


def tiny(section: Any, steps: int, patch: str = "32") -> None:
    """Tiny network settings (base 4, depth 2, batch 2) so a run takes seconds."""
    section.options.patch.setText(patch)
    section.options.steps.setValue(steps)
    section.options.batch.setValue(2)
    section.network.base.setValue(4)
    section.network.depth.setValue(2)


def run(qtbot: Any, section: Any, timeout: int = 60_000) -> None:
    """Press the section's start button and wait until the worker has finished."""
    section.panel.start_button.click()
    wait_idle(qtbot, section, timeout)


def wait_idle(qtbot: Any, section: Any, timeout: int = 60_000) -> None:
    qtbot.waitUntil(lambda: section.status.state == RunState.IDLE and not section.runner.running
                    and not getattr(section, "adding_layers", False), timeout=timeout)


class Notes:
    """Notifications shown since creation: ``errors()`` / ``infos()`` give their messages."""

    def __init__(self) -> None:
        self.start = len(notification_manager.records)

    def _of(self, severity: NotificationSeverity) -> list[str]:
        return [str(n.message) for n in notification_manager.records[self.start:] if n.severity == severity]

    def errors(self) -> list[str]:
        return self._of(NotificationSeverity.ERROR)

    def infos(self) -> list[str]:
        return self._of(NotificationSeverity.INFO)

    def warnings(self) -> list[str]:
        return self._of(NotificationSeverity.WARNING)


def paint_stroke(qtbot: Any, viewer: Any, layer: Any, start: tuple[float, float], end: tuple[float, float],
                 label: int, brush: int = 5) -> None:
    """Paint ``label`` on ``layer`` from ``start`` to ``end`` (world Y, X) with real mouse events on
    the canvas, at the viewer's current position of every other axis, as a user drags the brush."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    viewer.layers.selection.active = layer
    layer.mode, layer.selected_label, layer.brush_size = "paint", label, brush
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.waitUntil(lambda: canvas.width() > 50 and canvas.height() > 50, timeout=5000)

    def pixel(y: float, x: float) -> QPoint:
        cy, cx = viewer.scene.camera.center[-2:]
        zoom = viewer.scene.camera.zoom
        return QPoint(int(canvas.width() / 2 + (x - cx) * zoom), int(canvas.height() / 2 + (y - cy) * zoom))

    left, none = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    QTest.mousePress(canvas, left, none, pixel(*start))
    for i in range(1, 11):
        QTest.mouseMove(canvas, pixel(start[0] + (end[0] - start[0]) * i / 10, start[1] + (end[1] - start[1]) * i / 10))
        qtbot.wait(5)
    QTest.mouseRelease(canvas, left, none, pixel(*end))
    qtbot.wait(20)


def _shown_in(widget: Any, body: Any) -> bool:
    """True when ``widget`` is shown in ``body``: visible, and not inside a closed section (height 0)."""
    if not widget.isVisibleTo(body):
        return False
    anc = widget
    while anc is not None and anc is not body:
        if anc.height() == 0:
            return False
        anc = anc.parentWidget()
    return True


def _cut_by_parents(widget: Any, body: Any) -> str:
    """Which ancestor (up to ``body``) cuts ``widget``'s rectangle, if any."""
    from qtpy.QtCore import QRect

    anc = widget.parentWidget()
    while anc is not None:
        rect = QRect(widget.mapTo(anc, widget.rect().topLeft()), widget.size())
        if not anc.rect().contains(rect):
            return f"cut by its {type(anc).__name__} ({rect} in {anc.rect()})"
        if anc is body:
            break
        anc = anc.parentWidget()
    return ""


def clipped_texts(dock: Any) -> list[str]:
    """Every text the dock widget shows cut, as "what: why" lines (empty when all fits).

    Checked by geometry: the form is no wider than the dock; a word-wrapped label is as tall as its
    text needs at its width (``heightForWidth``) and any other label as wide as its text; a button or
    check box is at least its size hint (its whole text); a combo box's painted text fits its field (a
    longer one elided, in full in the tooltip); a line edit's text or placeholder fits; and no
    parent cuts any of them (e.g. a section capped at an older height).
    """
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QLabel, QLineEdit

    from napari_regcon._widgets.fitting import Combo

    body, problems = dock.widget(), []
    if body.width() > dock.viewport().width():
        problems.append(f"the form is {body.width()} px wide in a {dock.viewport().width()} px dock")
    for w in body.findChildren((QLabel, QAbstractButton, QComboBox, QLineEdit)):
        if not _shown_in(w, body):
            continue
        text = w.currentText() if isinstance(w, QComboBox) else (w.text() or getattr(w, "placeholderText", str)())
        if not text:
            continue
        what, why = f"{type(w).__name__} {text[:50]!r}", ""
        if isinstance(w, QLabel):
            if w.wordWrap() and w.heightForWidth(w.width()) > w.height():
                why = f"needs {w.heightForWidth(w.width())} px of height at width {w.width()}, has {w.height()}"
            elif not w.wordWrap() and w.sizeHint().width() > w.width():
                why = f"needs {w.sizeHint().width()} px of width, has {w.width()}"
        elif isinstance(w, QAbstractButton):
            if w.sizeHint().width() > w.width() or w.sizeHint().height() > w.height():
                why = f"needs {w.sizeHint()}, has {w.size()}"
        elif isinstance(w, Combo):
            shown = w.shown_text()
            if w.fontMetrics().horizontalAdvance(shown) > w.text_width():
                why = f"shows {shown!r} in {w.text_width()} px"
            elif shown != text and not w.full_text_tip().startswith(text):
                why = f"elided to {shown!r} without the full text as tooltip"
        elif isinstance(w, QComboBox):
            why = "a plain QComboBox (cuts a long text): use fitting.Combo"
        elif w.fontMetrics().horizontalAdvance(text) > w.contentsRect().width() - 8:
            why = f"needs {w.fontMetrics().horizontalAdvance(text)} px, has {w.contentsRect().width() - 8}"
        why = why or _cut_by_parents(w, body)
        if why:
            problems.append(f"{what}: {why}")
    return problems


def in_view(dock: Any, widget: Any) -> bool:
    """True when ``widget`` is wholly inside the visible part of the scrolling dock."""
    from qtpy.QtCore import QRect

    body = dock.widget()
    rect = QRect(widget.mapTo(body, widget.rect().topLeft()), widget.size())
    visible = QRect(0, dock.verticalScrollBar().value(), dock.viewport().width(), dock.viewport().height())
    return visible.contains(rect)
