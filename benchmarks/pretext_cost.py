"""Cost of one training step of each pretext relative to a supervised step (same net, same batch).

Every arm runs through the one training loop (``iter_train``, via the same Jobs the CLI builds):
a 2D U-Net (base 16, depth 3, GroupNorm) on batches of 8 patches of 128x128 from ISBI 2012
(pretexts on the unlabeled pool, the supervised arm on dense labels of slices 0..19). Arms run
round-robin, a few steps each per round, so the machine's load hits all of them alike; the ratio
is taken per round (arm median / supervised median of the same round) and its median reported.
Also reported: the CPU data side alone (sampling + ``prepare``: views, superpixels, masks) and
the forward+backward FLOPs of one step (deterministic, ``torch.utils.flop_counter``).

    python benchmarks/pretext_cost.py [--rounds 8] [--steps 2] [--threads 1 2] [--ndim 2 3]

Each thread count is measured separately: on a shared, loaded 2-core machine torch's 2-thread
pool stalls whenever the other core is busy (steps jump from ~0.4 s to 3-6 s), so the 1-thread
ratios are the steady ones; the FLOP ratios do not depend on threads.

Writes ``benchmarks/results/pretext_cost.json`` and ``pretext_cost.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    load_isbi,
    machine_info,
    markdown_table,
    median,
    spread,
    text_table,
    write_json,
    write_text,
)

from napari_regcon.core.workflows import Job, finetune_job, pretrain_job  # noqa: E402

ALL_ARMS = ("supervised", "mim", "regcon", "lrc", "glrp", "semi")
ARMS = ALL_ARMS[:5]  # the default set; "semi" = semi-supervised fine-tuning (two networks, unlabeled pool)
VESSELNN = Path("/work/shared/data/vesselnn_2pm")


def build_jobs(ndim: int, batch: int, arms: tuple[str, ...], seed: int = 0) -> dict[str, Job]:
    """One Job per arm with the same network and batch size."""
    common = {"base": 16, "depth": 3, "batch_size": batch, "seed": seed, "device": "cpu", "checkpoint_every": 0,
              "steps": 10}
    if ndim == 2:
        data = load_isbi()
        unlabeled = [data["train_raw"][:20], data["test_raw"]]
        image, labels = data["train_raw"][:20], (data["train_mem"][:20] > 0).astype(np.uint8) + 1
        patch: Any = 128
    else:
        import tifffile
        raw = tifffile.imread(VESSELNN / "raw_01.tif")
        lab = tifffile.imread(VESSELNN / "labels_01.tif")
        unlabeled = [raw]
        image, labels = raw, (lab > 0).astype(np.uint8) + 1
        patch = "8,64,64"
    jobs = {"supervised": finetune_job(image, labels, dense=True, ndim=ndim, patch_size=patch, **common)}
    for method in arms[1:]:
        if method == "semi":  # labeled batch + an equal unlabeled batch, each network on both
            jobs[method] = finetune_job(image, labels, dense=True, ndim=ndim, patch_size=patch, unlabeled=unlabeled,
                                        **common)
        else:
            jobs[method] = pretrain_job(unlabeled, method, ndim=ndim, patch_size=patch, **common)
    return jobs


def time_steps(job: Job, steps: int) -> list[float]:
    """Wall time (s) of each step of a fresh ``steps``-step run of the training loop (first dropped)."""
    job.config.steps = steps + 1
    times, last = [], None
    for ev in job.events():
        if ev.event == "step":
            if last is not None:
                times.append(ev.elapsed - last)
            last = ev.elapsed
    return times


def time_prepare(job: Job, n: int) -> list[float]:
    """Wall time (s) of the data side alone: sampling a batch and the task's ``prepare``."""
    rng = np.random.default_rng(0)
    options = getattr(job.task, "sample_options", None) or {}
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        job.task.prepare(job.sampler.sample(job.config.batch_size, **options), rng)
        out.append(time.perf_counter() - t0)
    return out


def step_flops(job: Job) -> int:
    """Forward + backward FLOPs of one step's loss (counted once, deterministic)."""
    bind = getattr(job.task, "bind", None)
    if bind is not None:
        bind(job.model)
    options = getattr(job.task, "sample_options", None) or {}
    batch = job.task.prepare(job.sampler.sample(job.config.batch_size, **options), np.random.default_rng(0))
    job.model.train()
    job.task.train()
    with FlopCounterMode(display=False) as counter:
        loss, _ = job.task.loss(job.model, batch)
        loss.backward()
    job.model.zero_grad(set_to_none=True)
    job.task.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def run(ndim: int, rounds: int, steps: int, threads: int, arms: tuple[str, ...] = ARMS) -> dict[str, Any]:
    torch.set_num_threads(threads)
    batch = 8 if ndim == 2 else 2
    jobs = build_jobs(ndim, batch, arms)
    for job in jobs.values():  # warm-up: first-call costs (allocations, lazy imports) out of the timing
        time_steps(job, 1)
    step_times: dict[str, list[float]] = {a: [] for a in arms}
    ratios: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(rounds):
        medians = {}
        for arm in arms:
            t = time_steps(jobs[arm], steps)
            step_times[arm] += t
            medians[arm] = median(t)
        for arm in arms:
            ratios[arm].append(medians[arm] / medians["supervised"])
        print(f"  {ndim}D, {threads} thread(s), round {r + 1}/{rounds}: " + ", ".join(f"{a} {medians[a] * 1e3:.0f} ms" for a in arms), flush=True)
    prep = {a: time_prepare(jobs[a], max(3, steps)) for a in arms}
    flops = {a: step_flops(jobs[a]) for a in arms}
    per_arm = {}
    for a in arms:
        per_arm[a] = {"step_ms_median": median(step_times[a]) * 1e3, "step_ms_range": [v * 1e3 for v in spread(step_times[a])],
                   "ratio_median": median(ratios[a]), "ratio_range": list(spread(ratios[a])),
                   "prepare_ms_median": median(prep[a]) * 1e3, "gflops": flops[a] / 1e9,
                   "flops_ratio": flops[a] / flops["supervised"], "n_steps": len(step_times[a]),
                   "params": jobs[a].task.params()}
    patch = list(jobs["supervised"].info["patch"])
    return {"ndim": ndim, "threads": threads, "batch": batch, "patch": patch, "rounds": rounds,
            "steps_per_round": steps, "arms": per_arm}


def table(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = ["arm", "step (ms, median)", "x supervised (wall)", "ratio range", "data side (ms)", "GFLOPs fwd+bwd",
               "x supervised (FLOPs)"]
    rows = []
    for a, v in result["arms"].items():
        rows.append([a, f"{v['step_ms_median']:.0f}", f"{v['ratio_median']:.2f}",
                     f"{v['ratio_range'][0]:.2f}-{v['ratio_range'][1]:.2f}", f"{v['prepare_ms_median']:.0f}",
                     f"{v['gflops']:.1f}", f"{v['flops_ratio']:.2f}"])
    return headers, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8, help="round-robin rounds (default 8)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per arm and round (default 2)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="torch thread counts to measure (default 1 2; 2 is the target machine)")
    ap.add_argument("--ndim", type=int, nargs="+", default=[2], choices=(2, 3),
                    help="2: batch 8 of 128x128 (default); 3: batch 2 of 8x64x64 on VesselNN")
    ap.add_argument("--arms", nargs="+", default=list(ARMS[1:]), choices=ALL_ARMS[1:],
                    help="arms besides the supervised reference (default: the four pretexts; 'semi' adds semi-supervised "
                         "fine-tuning); results of a non-default set go to pretext_cost_<arms>.*")
    args = ap.parse_args()
    arms = ("supervised", *args.arms)
    name = "pretext_cost" if set(arms) == set(ARMS) else "pretext_cost_" + "_".join(arms[1:])
    info = machine_info()
    results = [run(nd, args.rounds, args.steps, th, arms) for nd in args.ndim for th in args.threads]
    info["loadavg_end"] = list(__import__("os").getloadavg())
    data = {"machine": info, "results": results,
            "note": "Wall ratios are medians of per-round ratios measured in the same run; absolute times on a shared "
                    "2-core machine are noisy. The data side (sampling + prepare) is part of each step's wall time."}
    md = [f"# Pretext step cost relative to a supervised step\n\n{info['date']}, {info['cpu']} ({info['nproc']} cores, "
          f"load {info['loadavg_start'][0]:.1f} at start), `{info['command']}`\n"]
    for res in results:
        headers, rows = table(res)
        shape = "x".join(map(str, res["patch"]))
        title = (f"{res['ndim']}D U-Net base 16 depth 3, batch {res['batch']} of {shape}, {res['threads']} torch thread(s), "
                 f"{res['rounds']} rounds x {res['steps_per_round']} steps")
        print(f"\n{title}\n" + text_table(headers, rows))
        md.append(f"## {title}\n\n" + markdown_table(headers, rows) + "\n")
    md.append(data["note"])
    print(f"\nwrote {write_json(name, data)} and {write_text(name + '.md', chr(10).join(md))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
