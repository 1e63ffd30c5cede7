"""Widget state: a run-state enum, an evented run status, and the session's model store.

Following careamics-napari, a button only changes ``RunStatus.state``; whoever owns the run
listens to that change and starts or stops the worker, and the views (progress bar, buttons)
listen to the status fields. Nothing here imports Qt.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from psygnal import Signal, evented

from napari_regcon.core.bundle import Bundle, as_bundle


class RunState(str, Enum):
    """Life cycle of one background run (training or prediction)."""

    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"


@evented
@dataclass
class RunStatus:
    """What a progress view shows; updated on the main thread from the worker's updates."""

    state: RunState = RunState.IDLE
    step: int = 0
    total: int = 0
    loss: float = float("nan")
    eta: float = float("nan")
    message: str = ""
    activity: str = ""  # what the run does besides its steps, on the progress line (e.g. a preview warming up)


@dataclass
class ModelEntry:
    """A model bundle known to this session (trained here or loaded from a file)."""

    name: str
    bundle: dict[str, Any]
    path: str | None = None

    @property
    def info(self) -> Bundle:
        """The typed bundle (:class:`~napari_regcon.core.bundle.Bundle`)."""
        return as_bundle(self.bundle)

    @property
    def kind(self) -> str:
        """``pretrained`` (self-supervised, no classes) or ``segmentation``."""
        return self.info.kind

    def describe(self) -> str:
        """One line for a combo box: name, kind and classes (the kind only when the name does not say it,
        as the names the sections give do: "pretrained mim, 500 steps", "fine-tuned on em, 400 steps")."""
        info = self.info
        said = self.name.split(" ", 1)[0] in ("pretrained", "fine-tuned", "retrained")
        if info.is_segmentation:
            classes = ", ".join(info.classes.names)
            return f"{self.name} ({classes})" if said else f"{self.name} — segmentation ({classes})"
        return self.name if said else f"{self.name} — pretrained ({info.pretext.method or '?'})"


class Session:
    """Models produced or loaded in this viewer session, and whether a run is active.

    Widgets share one Session so that the Pretrain result appears in Fine-tune, and the
    Fine-tune result in Predict and Correct.
    """

    models_changed = Signal()
    busy_changed = Signal(bool)
    retrain_requested = Signal(object)  # the labels layer to train on, or None

    def __init__(self) -> None:
        self._models: list[ModelEntry] = []
        self._busy = False
        self.warned: weakref.WeakSet = weakref.WeakSet()  # layers already warned about (once each)

    @property
    def models(self) -> list[ModelEntry]:
        return list(self._models)

    def add(self, entry: ModelEntry) -> ModelEntry:
        """Add a model (newest last) and tell the pickers."""
        self._models.append(entry)
        self.models_changed.emit()
        return entry

    def latest(self, kind: str | None = None) -> ModelEntry | None:
        """The newest model, optionally of one kind."""
        for entry in reversed(self._models):
            if kind is None or entry.kind == kind:
                return entry
        return None

    @property
    def busy(self) -> bool:
        """True while any training or prediction runs (one at a time on a shared CPU/GPU)."""
        return self._busy

    @busy.setter
    def busy(self, value: bool) -> None:
        if bool(value) != self._busy:
            self._busy = bool(value)
            self.busy_changed.emit(self._busy)


@dataclass
class PlaneTracker:
    """The plane the viewer shows, written by the main thread and read by a worker."""

    _value: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, value: int | None) -> None:
        with self._lock:
            self._value = value

    def get(self) -> int | None:
        with self._lock:
            return self._value
