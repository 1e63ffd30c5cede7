"""Run a progress generator to the end and keep its return value: the one loop every caller shares."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

R = TypeVar("R")
U = TypeVar("U")


def drive(gen: Generator[Any, Any, R], callback: Callable[[Any], None] | None = None) -> R:
    """Exhaust ``gen``, passing each event to ``callback``; returns the generator's return value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)


def relay(gen: Generator[Any, Any, R], handle: Callable[[Any], Iterable[U]]) -> Generator[U, None, R]:
    """Exhaust ``gen``, yielding what ``handle`` makes of each event (zero or more items); returns the
    generator's return value (``result = yield from relay(gen, handle)``)."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        yield from handle(event)
