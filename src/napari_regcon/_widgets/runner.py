"""Starts and stops one section's background run when its RunStatus changes state.

The section supplies ``prepare(stop_event)``, which reads the widgets on the main thread and
returns the generator function and its arguments (arrays and parameter dataclasses only), and
``handle(update)`` for the updates it cares about. The runner keeps the status fields current,
turns :class:`~.updates.Failed` into one notification, and holds the session's busy flag so
that only one run uses the CPU/GPU at a time.

While a run is active the objects that existed before it are frozen for the garbage collector
(``gc.freeze``): otherwise the worker's allocations trigger a full collection of napari's few
hundred thousand objects, which holds the GIL for ~300 ms and freezes the viewer (measured in
benchmarks/gui_responsiveness.py). ``gc.unfreeze`` at the end restores normal collection.
For the same reason the interpreter's GIL switch interval is lowered from 5 to 1 ms during a run:
when the worker runs Python code (setting a job up, sampling), each of the many Python callbacks of
a redraw would otherwise wait up to 5 ms for the GIL.

A failure shows one error notification; the same message again within ``REPEAT_WINDOW`` seconds
(the user pressing Start again on the same input) only updates the status line ("Failed again: …"),
so notifications do not pile up.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from napari_regcon.core.errors import RegconError

from .state import RunState, RunStatus, Session
from .updates import Failed, Finished, PredictProgress, Started, StepUpdate, Update
from .wording import widget_text

Prepare = Callable[[threading.Event], tuple[Callable[..., Any], tuple]]

RUN_SWITCH_INTERVAL = 0.001
#: Seconds during which the same error message is not notified again (the status line still says it).
REPEAT_WINDOW = 60.0
_normal_switch_interval = sys.getswitchinterval()


def _enter_run() -> None:
    gc.freeze()
    sys.setswitchinterval(min(RUN_SWITCH_INTERVAL, _normal_switch_interval))


def _leave_run() -> None:
    gc.unfreeze()
    sys.setswitchinterval(_normal_switch_interval)


class Runner:
    """Owns the worker of one section."""

    def __init__(self, status: RunStatus, session: Session, prepare: Prepare,
                 handle: Callable[[Update], None], what: str = "run") -> None:
        self.status, self.session = status, session
        self._prepare, self._handle, self._what = prepare, handle, what
        self.worker: Any = None
        self.stop_event: threading.Event | None = None
        self.failed = False
        self.note = ""  # the run's note (e.g. the patch was clipped to the image), kept in the status
        self._last_error = ("", float("-inf"))  # the last error notified, and when
        status.events.state.connect(self._on_state)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _on_state(self, state: RunState) -> None:
        if state == RunState.RUNNING and self.worker is None:
            self._start()
        elif state == RunState.STOPPING and self.stop_event is not None:
            self.stop_event.set()

    def _start(self) -> None:
        if self.session.busy:
            show_info(f"Another run is active; wait for it to finish or stop it before starting this {self._what}.")
            self.status.state = RunState.IDLE
            return
        stop = threading.Event()
        try:
            func, args = self._prepare(stop)
        except RegconError as err:
            message = widget_text(str(err))
            if not self._notify_error(message):
                self.status.message = f"Failed again: {message}"
            self.status.state = RunState.IDLE
            return
        self.stop_event, self.failed, self.note = stop, False, ""
        self.status.activity = ""
        self.status.step, self.status.total = 0, 0
        self.status.loss, self.status.eta = float("nan"), float("nan")
        self.status.message = f"Preparing the {self._what}…"
        worker = create_worker(func, *args, _start_thread=False)
        worker.yielded.connect(self._on_update)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.session.busy = True
        _enter_run()
        worker.start()

    def stop(self) -> None:
        """Ask the run to end at the next step (same as pressing Stop)."""
        if self.status.state == RunState.RUNNING:
            self.status.state = RunState.STOPPING

    def detach(self) -> None:
        """The widget is going away: stop the run and stop relaying to its (deleted) views."""
        worker, session = self.worker, self.session
        if worker is None:
            return
        if self.stop_event is not None:
            self.stop_event.set()
        worker.yielded.disconnect(self._on_update)
        worker.finished.disconnect(self._on_finished)
        worker.finished.connect(lambda: (_leave_run(), setattr(session, "busy", False)))
        self.status.events.disconnect()

    def _on_update(self, upd: Update) -> None:
        st = self.status
        if isinstance(upd, Started):
            st.total = upd.total
            self.note = widget_text(upd.note)
            st.message = f"Running on {upd.device}…" + (f" {self.note}" if self.note else "")
        elif isinstance(upd, StepUpdate):
            st.total, st.loss, st.eta = upd.total, upd.loss, upd.eta
            st.step = upd.step
        elif isinstance(upd, PredictProgress):
            st.total, st.eta = upd.total, upd.eta
            st.step = upd.done
        elif isinstance(upd, Failed):
            self.failed = True
            message = widget_text(upd.message)
            st.message = f"Failed: {message}" if self._notify_error(message) else f"Failed again: {message}"
        elif isinstance(upd, Finished) and upd.message:
            st.message = upd.message
        try:
            self._handle(upd)
        except Exception as err:  # noqa: BLE001 - a broken result must not break the viewer
            self.result_failed(err)
            return
        if isinstance(upd, Finished) and not self.failed:
            self._last_error = ("", float("-inf"))  # a success: the next failure is news again
        if isinstance(upd, Finished) and self.note and self.note not in st.message:
            st.message = f"{st.message} {self.note}".strip()  # the note stays in view after the run

    def result_failed(self, err: Exception) -> None:
        """Showing the run's result raised ``err``: say so in the status line and once as an error."""
        self.failed = True
        msg = widget_text(str(err)) if isinstance(err, RegconError) else \
            f"Could not show the result ({type(err).__name__}: {err})."
        self.status.message = msg
        self._notify_error(msg)

    def _notify_error(self, message: str) -> bool:
        """Show ``message`` as an error notification unless it was just shown; True if shown."""
        now = time.monotonic()
        last, at = self._last_error
        if message == last and now - at < REPEAT_WINDOW:
            return False
        self._last_error = (message, now)
        show_error(message)
        return True

    def _on_finished(self) -> None:
        _leave_run()
        self.worker, self.stop_event = None, None
        self.session.busy = False
        self.status.state = RunState.IDLE
        self.status.activity = ""  # after IDLE: clearing it must not redraw the progress line over the result
