"""Which torch thread count should the CLI pick when the user gives none? (issue 14)

Policies: ``all`` cores, ``all-but-one``, and ``load`` (:func:`napari_regcon.core.device.default_threads`:
the cores the 1-minute load average leaves free, read once at start). For each machine state
(``--busy 0,2``: that many busy-loop processes at normal priority besides whatever else runs, started
``--settle`` seconds before the measurement so the load average sees them), one fine-tuning job
(the product's defaults: 2D U-Net base 16, depth 3, batch 8 of 128², strokes on ISBI slice 0,
``auto`` precision) runs blocks of steps with each distinct thread count in turn (``torch.set_num_threads``
between blocks; the first step of a block is not timed), so the load hits all counts alike. Each
policy's steps/s is the one of the count it picks in that state.

    python benchmarks/thread_default.py --busy 0,2

Writes ``benchmarks/results/thread_default.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch
from _common import (
    busy_processes,
    load_isbi,
    machine_info,
    markdown_table,
    median,
    text_table,
    write_json,
    write_text,
)
from scribbles import scribble

from napari_regcon.core.device import cpu_cores, default_threads
from napari_regcon.core.workflows import finetune_job

NAME = "thread_default"


def policies(cores: int, load: float) -> dict[str, int]:
    """Thread count each policy picks on ``cores`` cores at 1-minute load ``load``."""
    return {"all cores": cores, "all but one": max(1, cores - 1), "load average at start": default_threads(cores, load)}


def measure(job_events: Any, counts: list[int], rounds: int, block: int) -> dict[int, list[float]]:
    """Seconds per step for each thread count, blocks interleaved."""
    times: dict[int, list[float]] = {n: [] for n in counts}
    for r in range(rounds):
        for n in counts if r % 2 == 0 else counts[::-1]:
            torch.set_num_threads(n)
            for i in range(block):
                t0 = time.perf_counter()
                while next(job_events).event != "step":
                    pass
                if i:
                    times[n].append(time.perf_counter() - t0)
        print("  round", r + 1, ", ".join(f"{n} thread(s) {median(t) * 1e3:.0f} ms" for n, t in times.items()), flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busy", default="0,2", help="busy-loop processes per machine state (comma list)")
    p.add_argument("--settle", type=float, default=45.0, help="seconds between starting them and reading the load")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--block", type=int, default=4)
    args = p.parse_args(argv)
    machine = machine_info()
    cores = cpu_cores()
    data = load_isbi()
    truth = data["train_mem"][:20].astype(np.uint8) + 1
    labels = np.zeros_like(truth)
    labels[0] = scribble(truth[0], fraction=0.01, seed=0)
    states = []
    for busy in (int(b) for b in args.busy.split(",")):
        with busy_processes(busy):
            time.sleep(args.settle if busy else 0.0)
            load = os.getloadavg()[0]
            picks = policies(cores, load)
            counts = sorted(set(picks.values()), reverse=True)
            job = finetune_job(data["train_raw"][:20], labels, steps=100_000, seed=0, device="cpu", checkpoint_every=0)
            events = job.events()
            next(events)
            torch.set_num_threads(1)
            for _ in range(2):  # warm-up
                next(events)
            times = measure(events, counts, args.rounds, args.block)
            events.close()
            load_end = os.getloadavg()[0]
        rate = {n: 1 / median(t) for n, t in times.items()}
        states.append({"busy": busy, "loadavg_start": load, "loadavg_end": load_end, "picks": picks,
                       "steps_s": {str(n): r for n, r in rate.items()},
                       "policy_steps_s": {k: rate[n] for k, n in picks.items()}})
        print(f"busy {busy}, load {load:.2f}: " + ", ".join(f"{k} -> {n} ({rate[n]:.2f} steps/s)" for k, n in picks.items()))
    write_json(NAME, {"benchmark": NAME, "machine": machine, "cores": cores, "states": states,
                      "settings": vars(args)})
    head = ["machine state", "load (start → end)", *[f"{k}: threads, steps/s" for k in states[0]["picks"]]]
    rows = [[f"+{s['busy']} busy loops", f"{s['loadavg_start']:.1f} → {s['loadavg_end']:.1f}",
             *[f"{n}, {s['policy_steps_s'][k]:.2f}" for k, n in s["picks"].items()]] for s in states]
    print("\n" + text_table(head, rows))
    write_text(f"{NAME}.md", f"# Thread default ({machine['date']}, {machine['cpu']}, {cores} cores)\n\n"
               f"`{machine['command']}`\n\n" + markdown_table(head, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
