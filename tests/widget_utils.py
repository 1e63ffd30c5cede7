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
    qtbot.waitUntil(lambda: section.status.state == RunState.IDLE and not section.runner.running,
                    timeout=timeout)


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
