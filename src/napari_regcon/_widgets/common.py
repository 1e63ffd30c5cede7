"""Small Qt building blocks shared by the sections: layer pickers, the model picker, form rows."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from napari_regcon.core.bundle import as_bundle
from napari_regcon.core.checkpoint import load_bundle, save_bundle
from napari_regcon.core.errors import RegconError

from .fitting import Combo
from .layers import thin_isotropic_stack, unwrap
from .state import ModelEntry, Session


def hint(text: str) -> QLabel:
    """A word-wrapped explanatory label in a muted style."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: gray;")
    label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
    return label


def row(*widgets: QWidget, stretch_last: bool = False) -> QWidget:
    """Widgets side by side in one form row."""
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for i, w in enumerate(widgets):
        lay.addWidget(w, 1 if (stretch_last and i == len(widgets) - 1) or i == 0 else 0)
    return box


def warn_thin_isotropic(session: Session, layers: Iterable[Any], channel_axis: int | None) -> None:
    """Before a 3D run: warn once per layer (a notification) about a thin stack with an isotropic scale."""
    for layer in layers:
        layer = unwrap(layer)
        message = thin_isotropic_stack(layer, channel_axis)
        if message and layer not in session.warned:
            session.warned.add(layer)
            show_warning(message)


class _LayerWatcher:
    """Calls ``self.refresh()`` when layers are added, removed, reordered or renamed."""

    def _watch(self, viewer: Any) -> None:
        self._viewer = viewer
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._refresh_event)
        viewer.layers.events.moved.connect(self._refresh_event)
        for layer in viewer.layers:
            unwrap(layer).events.name.connect(self._refresh_event)

    def _on_inserted(self, event: Any) -> None:
        unwrap(event.value).events.name.connect(self._refresh_event)
        self.refresh()

    def _refresh_event(self, event: Any = None) -> None:
        self.refresh()

    def _layers(self, kinds: tuple[str, ...]) -> list[Any]:
        layers = [unwrap(ly) for ly in self._viewer.layers]
        return [ly for ly in layers if type(ly).__name__.lower() in kinds]

    def refresh(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class LayerCombo(Combo, _LayerWatcher):
    """A combo box of the viewer's layers of some kinds (e.g. ``("image",)``), kept up to date."""

    layer_changed = Signal(object)

    def __init__(self, viewer: Any, kinds: tuple[str, ...], none_text: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._kinds, self._none = kinds, none_text
        self._items: list[Any] = []
        self.currentIndexChanged.connect(lambda _i: self.layer_changed.emit(self.layer()))
        self._watch(viewer)
        self.refresh()

    def layer(self) -> Any | None:
        """The chosen layer, or None."""
        i = self.currentIndex()
        return self._items[i] if 0 <= i < len(self._items) else None

    def set_layer(self, layer: Any | None) -> None:
        """Select ``layer`` (refreshing first so a layer just added is listed)."""
        self.refresh()
        layer = unwrap(layer)
        for i, ly in enumerate(self._items):
            if ly is layer:
                self.setCurrentIndex(i)
                return

    def refresh(self) -> None:
        current = self.layer()
        layers = ([None] if self._none is not None else []) + self._layers(self._kinds)
        self.blockSignals(True)
        self.clear()
        self._items = layers
        for ly in layers:
            self.addItem(self._none if ly is None else ly.name)
        idx = next((i for i, ly in enumerate(layers) if ly is current and ly is not None), None)
        if idx is None:
            idx = 0
        self.setCurrentIndex(idx if layers else -1)
        self.blockSignals(False)
        if self.layer() is not current:
            self.layer_changed.emit(self.layer())


class LayerChecklist(QListWidget, _LayerWatcher):
    """A list of layers with check boxes (several images for pretraining or semi-supervision)."""

    def __init__(self, viewer: Any, kinds: tuple[str, ...], check_new: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._kinds, self._check_new = kinds, check_new
        self._items: list[Any] = []
        self._watch(viewer)
        self.refresh()

    def checked_layers(self) -> list[Any]:
        """Layers whose box is ticked, in list order."""
        return [ly for i, ly in enumerate(self._items) if self.item(i).checkState() == Qt.CheckState.Checked]

    def set_checked(self, layers: Iterable[Any]) -> None:
        chosen = [unwrap(ly) for ly in layers]
        for i, ly in enumerate(self._items):
            self.item(i).setCheckState(Qt.CheckState.Checked if any(ly is c for c in chosen) else Qt.CheckState.Unchecked)

    def refresh(self) -> None:
        checked = self.checked_layers() if self._items else []
        known = list(self._items)
        self.clear()
        self._items = self._layers(self._kinds)
        for ly in self._items:
            item = QListWidgetItem(ly.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = any(ly is c for c in checked) or (self._check_new and not any(ly is k for k in known))
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.addItem(item)
        rows = max(1, min(4, len(self._items)))
        self.setFixedHeight(rows * max(18, self.sizeHintForRow(0)) + 2 * self.frameWidth() + 4)


class ModelPicker(QWidget):
    """Choose a model bundle of this session, load one from a file, or save the chosen one."""

    changed = Signal()

    def __init__(self, session: Session, kinds: tuple[str, ...], none_text: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session, self._kinds, self._none = session, kinds, none_text
        self._entries: list[ModelEntry | None] = []
        self.combo = Combo()
        self.combo.setPlaceholderText("none yet")
        self.load_button = QPushButton("Load…")
        self.load_button.setToolTip("Load a model bundle (.pt) saved earlier")
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("Save the chosen model bundle to a file")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo, 1)
        lay.addWidget(self.load_button)
        lay.addWidget(self.save_button)
        self.load_button.clicked.connect(self.load)
        self.save_button.clicked.connect(self.save)
        self.combo.currentIndexChanged.connect(self._on_index)
        session.models_changed.connect(self._on_models_changed)
        self.refresh()

    def current(self) -> ModelEntry | None:
        """The chosen model, or None (e.g. "random initialisation")."""
        i = self.combo.currentIndex()
        return self._entries[i] if 0 <= i < len(self._entries) else None

    def select(self, entry: ModelEntry | None) -> None:
        for i, e in enumerate(self._entries):
            if e is entry:
                self.combo.setCurrentIndex(i)

    def refresh(self, select_newest: bool = False) -> None:
        current = self.current()
        models = [m for m in self.session.models if m.kind in self._kinds]
        self._entries = ([None] if self._none is not None else []) + models[::-1]
        self.combo.blockSignals(True)
        self.combo.clear()
        for e in self._entries:
            text = self._none if e is None else e.describe()
            self.combo.addItem(text)
            self.combo.setItemData(self.combo.count() - 1, text, Qt.ItemDataRole.ToolTipRole)
        target = models[-1] if select_newest and models else current
        idx = next((i for i, e in enumerate(self._entries) if e is target), 0)
        self.combo.setCurrentIndex(idx if self._entries else -1)
        self.combo.blockSignals(False)
        self._on_index()

    def _on_models_changed(self) -> None:
        self.refresh(select_newest=True)

    def _on_index(self, *_: Any) -> None:
        self.save_button.setEnabled(self.current() is not None)
        self.changed.emit()

    def load(self) -> ModelEntry | None:
        """Ask for a bundle file and add it to the session (validated, never executes code)."""
        path, _ = QFileDialog.getOpenFileName(self, "Load a napari-regcon model", "",
                                              "napari-regcon model (*.pt);;All files (*)")
        if not path:
            return None
        try:
            bundle = load_bundle(path)
        except RegconError as err:
            show_error(str(err))
            return None
        kind = as_bundle(bundle, path).kind
        if kind not in self._kinds:
            show_error(f"{Path(path).name} is a {kind} model, but a "
                       f"{' or '.join(self._kinds)} model is needed here.")
            return None
        return self.session.add(ModelEntry(Path(path).stem, bundle, str(path)))

    def save(self) -> str | None:
        """Ask for a file name and write the chosen bundle atomically."""
        entry = self.current()
        if entry is None:
            return None
        suggested = entry.path or f"{entry.name.replace(' ', '_')}.pt"
        path, _ = QFileDialog.getSaveFileName(self, "Save the model", suggested,
                                              "napari-regcon model (*.pt);;All files (*)")
        if not path:
            return None
        if not Path(path).suffix:
            path += ".pt"
        try:
            from napari_regcon.core.safety import (
                check_output,  # the CLI's output rule; the dialog asked to overwrite
            )
            check_output(path, [], overwrite=True, bundle=True, option="The model file")
            save_bundle(entry.bundle, path)
        except (RegconError, OSError) as err:
            show_error(str(err) if isinstance(err, RegconError) else f"Cannot write {path}: {err.strerror or err}.")
            return None
        entry.path = str(path)
        show_info(f"Saved the model to {path}.")
        return str(path)
