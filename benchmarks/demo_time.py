"""Wall time of ``napari-regcon demo`` in fp32 against the default precision (issue 14's demo target).

Runs the demo (:func:`napari_regcon.demo.run_demo`, the same call as the CLI) in this process,
``--rounds`` times per precision, the precisions alternating so that a change of the machine's
load hits both alike; each run writes into its own temporary folder. Records wall time per stage,
membrane Dice and the load average; the ratio is of median totals.

    python benchmarks/demo_time.py --rounds 2 --threads 1

Writes ``benchmarks/results/demo_time.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import torch
from _common import machine_info, markdown_table, median, text_table, write_json, write_text

from napari_regcon.core.precision import precision_name, resolve_precision
from napari_regcon.demo import run_demo

NAME = "demo_time"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="runs per precision, alternating")
    p.add_argument("--precisions", default="fp32,auto", help="comma-separated, the first is the reference")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    precisions = args.precisions.split(",")
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for prec in precisions:
            load0 = os.getloadavg()[0]
            with tempfile.TemporaryDirectory() as tmp:
                rep = run_demo(tmp, quiet=True, precision=prec)
            runs.append({"round": r, "precision": prec, "seconds": rep["seconds"], "dice": rep["membrane_dice"],
                         "loadavg": [load0, os.getloadavg()[0]]})
            print(f"round {r} {prec}: {rep['seconds']['total']:.1f} s, Dice {rep['membrane_dice']:.3f}", flush=True)
    ref = median([x["seconds"]["total"] for x in runs if x["precision"] == precisions[0]])
    headers = ["precision", "used", "runs", "total s (median)", "pretrain s", "fine-tune s", "predict s",
               f"speed-up vs {precisions[0]}", "membrane Dice"]
    rows = []
    for prec in precisions:
        mine = [x for x in runs if x["precision"] == prec]
        tot = median([x["seconds"]["total"] for x in mine])
        rows.append([prec, precision_name(resolve_precision(prec, torch.device("cpu"))), len(mine), f"{tot:.1f}",
                     *(f"{median([x['seconds'][k] for x in mine]):.1f}" for k in ("pretrain", "finetune", "predict")),
                     f"{ref / tot:.2f}x", f"{median([x['dice'] for x in mine]):.3f}"])
    print(text_table(headers, rows))
    write_json(NAME, {"machine": machine_info(), "threads": args.threads, "runs": runs})
    loads = [x["loadavg"][0] for x in runs]
    write_text(f"{NAME}.md", f"# Demo wall time per precision\n\n{machine_info()['cpu']}, {args.threads} torch "
               f"thread(s), load {min(loads):.1f}-{max(loads):.1f}. Produced by: `python benchmarks/demo_time.py "
               f"--rounds {args.rounds} --threads {args.threads}`.\n\n" + markdown_table(headers, rows))


if __name__ == "__main__":
    main()
