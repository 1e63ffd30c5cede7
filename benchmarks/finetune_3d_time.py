"""How long does ``napari-regcon finetune --ndim 3`` take with its defaults, and with candidate defaults? (issue 14)

The stack: 25x512x512 two-photon planes (VesselNN stack 01, 15 planes, followed by its first 10
again), painted the way a user paints: brush strokes on ~1 % of planes 2, 12 and 22 (vessel and
background; the ``strokes`` recipe, whose plateau schedule may end a run early: at the earliest
after 60 steps + a cool-down of 15 % of the step limit). Each setting is one fine-tuning job built as
the CLI builds it (``finetune_job``, ``auto`` precision); the settings run blocks of steps in turn
(the first step of each block is not timed), and the whole run is extrapolated from the median step:
``steps`` x median step (the longest run) and the earliest plateau stop.

    python benchmarks/finetune_3d_time.py --threads 1
    python benchmarks/finetune_3d_time.py --threads 2 --settings default,8x64x64/b4/base8

A setting is ``default`` or ``ZxYxX/bB/baseN[/sS]`` (patch, batch, width, step limit).
Writes ``benchmarks/results/finetune_3d_time.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from _common import machine_info, markdown_table, median, text_table, write_json, write_text
from scribbles import scribble

from napari_regcon.core.workflows import Job, finetune_job

NAME = "finetune_3d_time"
VESSEL = Path(os.environ.get("REGCON_VESSELNN", "/work/shared/data/vesselnn_2pm"))
PAINTED = (2, 12, 22)


def stack() -> tuple[np.ndarray, np.ndarray]:
    """The 25x512x512 stack and its strokes (1 background, 2 vessel, 0 not annotated)."""
    raw = tifffile.imread(VESSEL / "raw_01.tif")
    truth = tifffile.imread(VESSEL / "labels_01.tif").astype(np.uint8) + 1
    image, truth = np.concatenate([raw, raw[:10]]), np.concatenate([truth, truth[:10]])
    labels = np.zeros_like(truth)
    for z in PAINTED:
        labels[z] = scribble(truth[z], fraction=0.01, seed=z)
    return image, labels


def parse_setting(text: str) -> dict[str, Any]:
    """``default`` -> {}; ``8x64x64/b4/base8/s400`` -> finetune_job keywords."""
    if text == "default":
        return {}
    out: dict[str, Any] = {}
    for part in text.split("/"):
        if part.startswith("base"):
            out["base"] = int(part[4:])
        elif part.startswith("b"):
            out["batch_size"] = int(part[1:])
        elif part.startswith("s"):
            out["steps"] = int(part[1:])
        else:
            out["patch_size"] = part.replace("x", ",")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="default,8x64x64/b4/base8,8x128x128/b4/base8,16x64x64/b4/base16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="auto")
    p.add_argument("--name", default=NAME, help="results file name (default %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    image, labels = stack()
    jobs: dict[str, Job] = {}
    gens = {}
    for s in args.settings.split(","):
        kw = parse_setting(s)
        steps = kw.pop("steps", None)
        job = finetune_job(image, labels, ndim=3, device="cpu", checkpoint_every=0, precision=args.precision,
                           **({"steps": steps} if steps else {}), **kw)
        jobs[s] = job
        gens[s] = job.events()
        next(gens[s])
        next(gens[s])  # warm-up step
    times: dict[str, list[float]] = {s: [] for s in jobs}
    for r in range(args.rounds):
        for s in (list(jobs) if r % 2 == 0 else list(jobs)[::-1]):
            for i in range(args.block):
                t0 = time.perf_counter()
                while next(gens[s]).event != "step":
                    pass
                if i:
                    times[s].append(time.perf_counter() - t0)
        print(f"  round {r + 1}: " + ", ".join(f"{s} {median(t):.2f} s" for s, t in times.items()), flush=True)
    for g in gens.values():
        g.close()
    rows = []
    for s, job in jobs.items():
        c, step = job.config, median(times[s])
        earliest = (c.min_steps + max(1, round(c.cooldown * c.steps))) if c.schedule == "plateau" else c.steps
        rows.append({"setting": s, "patch": list(job.info["patch"]), "batch": c.batch_size, "base": job.model.config.base,
                     "steps": c.steps, "recipe": job.info["recipe"].name, "step_s": step,
                     "full_run_min": c.steps * step / 60, "earliest_stop_steps": min(earliest, c.steps),
                     "earliest_stop_min": min(earliest, c.steps) * step / 60})
    result = {"benchmark": NAME, "machine": machine, "threads": args.threads, "precision": args.precision,
              "shape": list(image.shape), "rows": rows, "loadavg_end": list(os.getloadavg())}
    write_json(args.name, result)
    head = ["setting", "patch", "batch", "base", "recipe", "s/step", "step limit: min", "earliest plateau stop: steps, min"]
    table = [[r["setting"], "x".join(map(str, r["patch"])), r["batch"], r["base"], r["recipe"], f"{r['step_s']:.2f}",
              f"{r['steps']}: {r['full_run_min']:.1f}", f"{r['earliest_stop_steps']}: {r['earliest_stop_min']:.1f}"]
             for r in rows]
    print("\n" + text_table(head, table))
    write_text(f"{args.name}.md", f"# 3D fine-tune time on a {'x'.join(map(str, image.shape))} stack ({machine['date']}, "
               f"{machine['cpu']}, {args.threads} thread(s), load {machine['loadavg_start'][0]:.1f} → "
               f"{result['loadavg_end'][0]:.1f})\n\n`{machine['command']}`\n\n" + markdown_table(head, table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
