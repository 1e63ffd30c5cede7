"""Training throughput with 1 vs N ranks under torchrun (gloo on CPU, NCCL on GPUs).

Runs the real command line ``torchrun --nproc-per-node N -m napari_regcon pretrain ...`` on ISBI
slices for each N and reports patches per second (all ranks together; each rank draws its own
batch). On the 2-core CI machine this mostly shows the cost of gradient averaging: two ranks
with one thread each against one rank with two threads. On a GPU node pass ``--device cuda``
and ``--ranks 1,2,4,8``.

    python benchmarks/ddp_scaling.py [--ranks 1,2] [--steps 60] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tifffile
import torch
from _common import load_isbi, machine_info, markdown_table, text_table, write_json, write_text


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(ranks: int, image: Path, steps: int, batch: int, device: str, threads: int) -> float:
    """Seconds for ``steps`` pretraining steps with ``ranks`` processes (start-up excluded via two runs)."""
    out = image.parent / f"ddp_{ranks}.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
           "--master-addr", "127.0.0.1", "--master-port", str(_port()), "-m", "napari_regcon", "pretrain", str(image),
           "--out", str(out), "--batch-size", str(batch), "--device", device, "--checkpoint-every", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    times = []
    for n in (max(2, steps // 10), steps):  # the difference removes process start-up and the first steps
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--steps", str(n)], check=True, env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
    return (times[1] - times[0]) / (steps - max(2, steps // 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8, help="patches per rank per step")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads-per-rank", type=int, default=None,
                    help="CPU threads of each rank (default: the cores divided among the ranks)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        image = Path(d) / "isbi.tif"
        tifffile.imwrite(image, load_isbi()["train_raw"][:20])
        rows = []
        for n in [int(r) for r in args.ranks.split(",")]:
            threads = args.threads_per_rank or (max(1, cores // n) if args.device == "cpu" else 1)
            sec = run(n, image, args.steps, args.batch_size, args.device, threads)
            rows.append({"ranks": n, "threads_per_rank": threads, "seconds_per_step": sec,
                         "patches_per_s": n * args.batch_size / sec})
            print(f"{n} rank(s): {rows[-1]['patches_per_s']:.1f} patches/s", flush=True)
    base = rows[0]["patches_per_s"]
    headers = ["ranks", "threads/rank", "s/step", "patches/s", "speed-up"]
    table = [[r["ranks"], r["threads_per_rank"], f"{r['seconds_per_step']:.3f}", f"{r['patches_per_s']:.1f}",
              f"{r['patches_per_s'] / base:.2f}x"] for r in rows]
    print(text_table(headers, table))
    m = machine_info()
    write_json("ddp_scaling", {"machine": m, "device": args.device, "cuda_devices": torch.cuda.device_count(),
                               "batch_per_rank": args.batch_size, "rows": rows})
    write_text("ddp_scaling.md", markdown_table(headers, table) + f"\n\n`{m['command']}`; {m['date']}; {m['cpu']}, "
               f"{cores} cores; load average at start {m['loadavg_start'][0]:.1f}.\n")


if __name__ == "__main__":
    main()
