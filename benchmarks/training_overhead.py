"""Training-loop overhead: core.training.iter_train against the bare optimisation step.

For each task (supervised fine-tuning on painted ISBI 2012 labels; the MIM pretext on the
unlabeled ISBI stacks) the same network is trained for ``--steps`` steps twice, side by side,
alternating one step of each (who goes first alternates too):

- ``loop``: the real job (workflows.finetune_job / pretrain_job -> iter_train): patch sampling,
  augmentation/masking, progress events, loss history, LR schedule;
- ``bare``: the same batches, sampled and prepared beforehand, through only
  ``task.loss`` -> ``backward`` -> ``AdamW.step`` (the minimum any loop must do).

Both start from the same weights, see the same batches and follow the same LR schedule, so they
do identical arithmetic. Overhead = 1 - loop patches/s / bare patches/s, the median over repeats
of the ratio of their summed step times. Also reported: the per-batch cost of sampling and of ``prepare``.

Example::

    python benchmarks/training_overhead.py --steps 30 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import numpy as np
import torch
from _common import (
    load_isbi,
    machine_info,
    markdown_table,
    median,
    spread,
    text_table,
    write_json,
    write_text,
)

from napari_regcon.core.training import lr_factor
from napari_regcon.core.workflows import Job, finetune_job, pretrain_job

NAME = "training_overhead"


def build_job(task: str, data: dict, args: argparse.Namespace) -> Job:
    """The real job of the given kind on ISBI 2012 (supervised: dense truth of slice 0 as sparse labels)."""
    common = {"patch_size": args.patch, "batch_size": args.batch_size, "steps": args.steps, "seed": 0,
              "device": "cpu", "checkpoint_every": 0}
    if task == "supervised":
        labels = np.zeros(data["train_mem"][:20].shape, np.uint8)
        labels[0] = data["train_mem"][0] + 1
        return finetune_job(data["train_raw"][:20], labels, **common)
    return pretrain_job([data["train_raw"][:20], data["test_raw"]], task, **common)


def presample(job: Job) -> tuple[list[dict], float, float]:
    """The batches iter_train will draw (same seeds), prepared; also seconds per sample() and prepare()."""
    sampler = copy.deepcopy(job.sampler)
    rng = np.random.default_rng(job.config.seed + 1)  # iter_train's augmentation generator
    batches, t_sample, t_prepare = [], 0.0, 0.0
    options = getattr(job.task, "sample_options", None) or {}
    for _ in range(job.config.steps):
        t0 = time.perf_counter()
        raw = sampler.sample(job.config.batch_size, **options)
        t1 = time.perf_counter()
        batches.append(job.task.prepare(raw, rng))
        t2 = time.perf_counter()
        t_sample += t1 - t0
        t_prepare += t2 - t1
    n = job.config.steps
    return batches, t_sample / n, t_prepare / n


class Bare:
    """The bare step on a copy of the network: task.loss -> backward -> AdamW (same LR schedule)."""

    def __init__(self, job: Job, state: dict) -> None:
        self.model, self.task = copy.deepcopy(job.model), copy.deepcopy(job.task)
        self.model.load_state_dict(state)
        self.model.train()
        self.task.train()
        params = [p for p in list(self.model.parameters()) + list(self.task.parameters()) if p.requires_grad]
        cfg = job.config
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # the same schedule as iter_train, so both runs follow the same weights and do identical work
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup, cfg.min_lr_ratio))

    def step(self, batch: dict) -> None:
        loss, _ = self.task.loss(self.model, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()


def one_repeat(job: Job, state: dict, sampler_state: dict, batches: list[dict], flip: bool) -> tuple[float, float]:
    """Run iter_train and the bare loop side by side, one step each in turn; their summed seconds.

    Alternating step by step keeps each pair of steps seconds apart, so the load of a shared
    machine hits both alike.
    """
    job.model.load_state_dict(state)
    job.sampler.rng.bit_generator.state = sampler_state  # iter_train draws exactly ``batches``
    bare = Bare(job, state)
    gen = job.events()
    assert next(gen).event == "start"
    t_loop = t_bare = 0.0
    for i, batch in enumerate(batches):
        for who in (("loop", "bare") if (i + flip) % 2 == 0 else ("bare", "loop")):
            t0 = time.perf_counter()
            if who == "loop":
                ev = next(gen)  # one sampled, prepared, optimised and logged step
                assert ev.event == "step", ev.event
                t_loop += time.perf_counter() - t0
            else:
                bare.step(batch)
                t_bare += time.perf_counter() - t0
    for _ in gen:  # let the loop finish (final bundle), untimed
        pass
    return t_loop, t_bare


def bench_task(task: str, data: dict, args: argparse.Namespace) -> dict[str, Any]:
    job = build_job(task, data, args)
    state = copy.deepcopy(job.model.state_dict())
    sampler_state = copy.deepcopy(job.sampler.rng.bit_generator.state)
    batches, s_sample, s_prepare = presample(job)
    Bare(job, state).step(batches[0])  # warm-up
    loops, bares, ratios = [], [], []
    for rep in range(args.repeats):
        t_loop, t_bare = one_repeat(job, state, sampler_state, batches, bool(rep % 2))
        loops.append(t_loop)
        bares.append(t_bare)
        ratios.append(t_bare / t_loop)
        print(f"  {task} repeat {rep + 1}/{args.repeats}: loop {args.steps * args.batch_size / t_loop:.1f} patches/s, "
              f"bare {args.steps * args.batch_size / t_bare:.1f} patches/s, overhead {100 * (1 - ratios[-1]):.1f}%",
              flush=True)
    n = args.steps * args.batch_size
    return {"task": task, "steps": args.steps, "batch": args.batch_size, "patch": args.patch, "repeats": args.repeats,
            "seconds_loop": loops, "seconds_bare": bares,
            "patches_s_loop": n / median(loops), "patches_s_bare": n / median(bares),
            "overhead_median": 1 - median(ratios), "overhead_range": [1 - r for r in reversed(spread(ratios))],
            "sample_ms_per_batch": 1000 * s_sample, "prepare_ms_per_batch": 1000 * s_prepare,
            "step_ms_bare": 1000 * median(bares) / args.steps}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="supervised,mim", help="supervised and/or pretext names")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    data = load_isbi()
    results = [bench_task(t.strip(), data, args) for t in args.tasks.split(",") if t.strip()]
    headers = ["task", "loop patches/s", "bare patches/s", "overhead (median, range)", "sample ms/batch",
               "prepare ms/batch", "bare step ms"]
    rows = [[r["task"], f"{r['patches_s_loop']:.1f}", f"{r['patches_s_bare']:.1f}",
             f"{100 * r['overhead_median']:.1f}% ({100 * r['overhead_range'][0]:.1f}–{100 * r['overhead_range'][1]:.1f}%)",
             f"{r['sample_ms_per_batch']:.1f}", f"{r['prepare_ms_per_batch']:.1f}", f"{r['step_ms_bare']:.0f}"]
            for r in results]
    print("\n" + text_table(headers, rows))
    write_json(NAME, {"benchmark": NAME, "machine": machine, "threads": args.threads, "results": results})
    write_text(f"{NAME}.md", f"# Training-loop overhead ({machine['date']}, {machine['nproc']} cores, torch "
               f"{machine['torch']}, {args.threads} threads, {args.steps} steps of {args.batch_size}x{args.patch}², "
               f"median of {args.repeats} interleaved repeats)\n\n`{machine['command']}`\n\n" + markdown_table(headers, rows))


if __name__ == "__main__":
    main()
