"""Helpers of the GUI tests (tests/test_widgets_*.py): tiny settings, waiting, notifications."""

from __future__ import annotations

from typing import Any

from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_regcon._widgets import RegconWidget, RunState

EM_SCALE = (50.0, 4.0, 4.0)


def make_widget(make_napari_viewer: Any, image: Any = None, **image_kw: Any) -> tuple[Any, RegconWidget]:
    """A viewer with (optionally) an image layer and the dock widget opened as napari opens it
    from the Plugins menu (through the manifest, so the widget gets napari's viewer proxy)."""
    viewer = make_napari_viewer()
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
