"""Run a progress generator to the end and keep its return value: the one loop every caller shares."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

R = TypeVar("R")


def drive(gen: Generator[Any, Any, R], callback: Callable[[Any], None] | None = None) -> R:
    """Exhaust ``gen``, passing each event to ``callback``; returns the generator's return value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
