"""How long a user waits in the strokes loop: first useful preview, round 0, a correction round.

Drives the Fine-tune widget's worker body (``_widgets.jobs.finetune_updates``, the code a click on
Start runs in its thread) on the ISBI training stack (20 x 512²) with ~1 % of slice 0 painted as
strokes, the viewer on slice 0. Records: seconds from Start to the first live preview (a preview
that shows both classes; one-class washes are not shown), to the end of round 0 (the recipe ends
by itself), and the wall time of a correction round (continue from the model with correction
strokes + predict the slice in view), at the widget's default thread count. ``--busy N`` runs N
busy-loop processes at normal priority meanwhile, as a laptop with other programs running.

    python benchmarks/round_time.py --busy 0
    python benchmarks/round_time.py --busy 2
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

import numpy as np
from _common import (
    busy_processes,
    machine_info,
    markdown_table,
    read_json,
    text_table,
    write_json,
    write_text,
)
from annotation_loop import correction_strokes, first_strokes, load_dataset

from napari_regcon._widgets.jobs import FinetuneParams, cpu_threads, finetune_updates, predict_plane
from napari_regcon._widgets.state import PlaneTracker
from napari_regcon._widgets.updates import Failed, Finished, PreviewUpdate, Started, StepUpdate
from napari_regcon.core.options import FinetuneOptions

NAME = "round_time"


def one_round(image: np.ndarray, labels: np.ndarray, init: dict | None, seed: int) -> dict[str, Any]:
    """Run the widget's fine-tune worker once; times of its events and the bundle."""
    params = FinetuneParams(FinetuneOptions(seed=seed), init=init, class_names={1: "cell", 2: "membrane"},
                            preview_every=3.0)
    tracker = PlaneTracker()
    tracker.set(0)
    on = threading.Event()
    on.set()
    t0 = time.perf_counter()
    out: dict[str, Any] = {"first_preview_s": None, "steps": 0}
    for upd in finetune_updates(image, labels, params, threading.Event(), tracker, on):
        now = time.perf_counter() - t0
        if isinstance(upd, Started):
            out["started_s"] = now
        elif isinstance(upd, PreviewUpdate) and out["first_preview_s"] is None:
            out["first_preview_s"] = now
        elif isinstance(upd, StepUpdate):
            out["steps"] = upd.step
        elif isinstance(upd, Failed):
            raise SystemExit(upd.message)
        elif isinstance(upd, Finished):
            out.update(train_s=now, bundle=upd.result, message=upd.message)
    t1 = time.perf_counter()
    _, out["plane"] = predict_plane(out["bundle"], image, None, 0)  # the slice in view, as after a round
    out["round_s"] = out["train_s"] + time.perf_counter() - t1
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--busy", type=int, default=0, help="busy-loop processes running meanwhile")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data = load_dataset("isbi")
    with busy_processes(args.busy):
        labels = first_strokes(data, 0.01, args.seed)
        r0 = one_round(data.image, labels, None, args.seed)
        painted = labels > 0
        labels[0] = correction_strokes(data.truth[0], r0["plane"], labels[0], painted[0],
                                       int(0.005 * labels[0].size), data.radius, np.random.default_rng(args.seed))
        r1 = one_round(data.image, labels, r0["bundle"], args.seed + 1)
    rec = {"busy": args.busy, "threads": cpu_threads(), "loadavg": list(os.getloadavg()),
           "first_preview_s": r0["first_preview_s"], "round0_s": r0["round_s"], "round0_steps": r0["steps"],
           "round0_message": r0["message"], "correction_s": r1["round_s"], "correction_steps": r1["steps"],
           "correction_first_preview_s": r1["first_preview_s"], "machine": machine_info()}
    stored = read_json(NAME) or {"records": []}
    stored["records"] = [r for r in stored["records"] if r["busy"] != args.busy] + [rec]
    write_json(NAME, stored)
    headers = ["busy processes", "torch threads", "load avg (1 min)", "first preview s", "round 0 s (steps)",
               "correction round s (steps)"]
    rows = [[r["busy"], r["threads"], f"{r['loadavg'][0]:.1f}", f"{r['first_preview_s']:.1f}",
             f"{r['round0_s']:.0f} ({r['round0_steps']})", f"{r['correction_s']:.0f} ({r['correction_steps']})"]
            for r in sorted(stored["records"], key=lambda r: r["busy"])]
    print(text_table(headers, rows))
    write_text(f"{NAME}.md", "# Strokes loop: what the user waits for\n\n" + markdown_table(headers, rows))


if __name__ == "__main__":
    main()
