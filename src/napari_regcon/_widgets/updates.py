"""Typed updates a worker yields to the main thread (errors travel as updates too)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Started:
    """The run is set up and about to do ``total`` steps (or tiles) on ``device``."""

    total: int
    device: str
    detail: str = ""
    note: str = ""  # what the run changed in what was asked, e.g. a patch clipped to the image


@dataclass
class StepUpdate:
    """Training progress; ``points`` are all (step, loss) pairs since the previous update."""

    step: int
    total: int
    loss: float
    eta: float
    points: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class PreviewUpdate:
    """The current model's prediction of one plane (``plane`` None for a 2D image), made at ``at``
    (``time.monotonic()`` in the worker); ``final`` for the one made with the finished model (not part
    of the run's cadence)."""

    plane: int | None
    labels: np.ndarray
    final: bool = False
    at: float = field(default_factory=time.monotonic)


@dataclass
class PhaseUpdate:
    """The run entered another phase at ``step`` (the second pass of self-training): ``label`` says which."""

    step: int
    label: str


@dataclass
class PredictProgress:
    """Tiled prediction progress: ``done`` tiles of ``total``."""

    done: int
    total: int
    eta: float


@dataclass
class Finished:
    """The run ended; ``result`` is a bundle (training) or a :class:`PredictResult`."""

    result: Any
    cancelled: bool = False
    message: str = ""


@dataclass
class Failed:
    """The run failed with a one-sentence ``message`` meant for the user."""

    message: str


@dataclass
class PredictResult:
    """Arrays produced by a prediction run (spatial shape of the image)."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    class_values: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Update = Started | StepUpdate | PhaseUpdate | PreviewUpdate | PredictProgress | Finished | Failed
