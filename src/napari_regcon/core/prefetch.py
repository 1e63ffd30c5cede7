"""Draw the next training batch in a background thread while the current step runs.

Sampling and the task's ``prepare`` (augmentation, masking, views, superpixels) are NumPy work on
the CPU; the step is PyTorch work that releases the GIL. With one torch thread on a multi-core
CPU the two can overlap. The batches come in the same order from the same random generators as
without prefetching (one worker, one draw at a time), so a seeded run is reproducible either way.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """Call ``draw`` one ahead in a worker thread (``enabled``), or in the caller's thread.

    ``take(more)`` returns the next draw; with ``more`` it starts the one after, so the worker
    never draws a batch the run will not use when the caller says it is the last step.
    """

    def __init__(self, draw: Callable[[], T], enabled: bool = True) -> None:
        self.draw = draw
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="regcon-prefetch") if enabled else None
        self.pending: Future[T] | None = None

    def take(self, more: bool = True) -> T:
        """The next draw (waiting for the worker if it is still drawing)."""
        if self.pool is None:
            return self.draw()
        item = (self.pending or self.pool.submit(self.draw)).result()
        self.pending = self.pool.submit(self.draw) if more else None
        return item

    def close(self) -> None:
        """Wait for a draw in flight and stop the worker (idempotent)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool, self.pending = None, None
