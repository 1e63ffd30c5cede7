"""Progress on the terminal, shared by the command line and the demo: a tqdm bar fed with events."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any


def progress_bar(desc: str | Mapping[str, str], quiet: bool) -> Callable[[Any], None]:
    """A callback drawing a tqdm bar from training (``Progress``) or prediction (``PredictEvent``) events.

    ``desc`` labels the bar; a mapping gives one label per prediction stage (e.g. ``tiles``, ``crf``),
    and each stage gets a bar of its own.
    """
    from tqdm import tqdm

    state: dict[str, Any] = {"bar": None, "stage": None}

    def cb(ev: Any) -> None:
        if quiet:
            return
        stage = getattr(ev, "stage", None)
        if stage != state["stage"]:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"], state["stage"] = None, stage
        label = desc if isinstance(desc, str) else desc.get(stage, stage or "")
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = tqdm(total=ev.total, desc=label, file=sys.stderr, dynamic_ncols=True,
                                      initial=getattr(ev, "step", 0) if getattr(ev, "event", "") == "start" else 0,
                                      mininterval=0.5)
            if getattr(ev, "device", ""):
                bar.write(f"{label}: training on {ev.device}", file=sys.stderr)
        n = getattr(ev, "step", getattr(ev, "done", 0))
        if n > bar.n:
            bar.update(n - bar.n)
        if getattr(ev, "event", "") == "step":
            bar.set_postfix(loss=f"{ev.loss:.4f}", refresh=False)
        if getattr(ev, "event", "") in ("done", "cancelled") or getattr(ev, "done", -1) == ev.total:
            bar.close()
            if getattr(ev, "reason", "") == "stable":
                print(f"{label}: ended by itself after {ev.step} of {ev.total} steps: the prediction stopped "
                      "changing (--recipe dense trains every step)", file=sys.stderr)
    return cb
