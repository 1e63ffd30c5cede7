"""Does GLRP's post-processing (a fully connected CRF) improve membrane Dice on ISBI 2012?

Fine-tunes the label-efficiency recipe (random init, or a pretext bundle from the label-efficiency
cache) on ``--regime`` labels, predicts class probabilities for the held-out training slices
10..19 and the evaluation slices 20..29, chooses the CRF parameters on 10..19 (a small grid) and
reports the Dice of slices 20..29 without CRF, with the default parameters and with the chosen
ones. The grid is searched with the first backend (pydensecrf2 when installed); the NumPy
fallback is scored with the same chosen parameters.

Example::

    python benchmarks/crf_refinement.py --seeds 0,1 --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from _common import load_isbi, machine_info, markdown_table, text_table, write_json, write_text
from label_efficiency import EVAL_SLICES, LABEL_SLICES, VAL_SLICES, regime_labels, scores

from napari_regcon.core.postprocess import crf_refine, densecrf_available
from napari_regcon.core.workflows import finetune_job, run_predict

NAME = "crf_refinement"
DEFAULTS = {"spatial_weight": 3.0, "spatial_sigma": 3.0, "bilateral_weight": 5.0, "bilateral_sigma": 30.0,
            "intensity_sigma": 12.0}
GRID = {"spatial_weight": [0.0, 3.0], "bilateral_weight": [1.0, 3.0, 5.0, 10.0],
        "bilateral_sigma": [5.0, 15.0, 30.0], "intensity_sigma": [6.0, 12.0, 24.0]}


def refined_dice(probs: np.ndarray, raw: np.ndarray, truth: np.ndarray, backend: str, params: dict) -> float:
    """Membrane Dice of the CRF-refined argmax over a stack of planes (probs: K, Z, Y, X)."""
    pred = np.stack([crf_refine(probs[:, z], raw[z], backend=backend, **params).argmax(0) + 1
                     for z in range(raw.shape[0])]).astype(np.uint8)
    return scores(pred, truth)["dice"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0")
    p.add_argument("--regime", default="1")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_isbi()
    raw = data["train_raw"]
    backends = (["densecrf"] if densecrf_available() else []) + ["numpy"]
    keys = list(GRID)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        labels = regime_labels(data["train_mem"], args.regime, seed=0)
        job = finetune_job(raw[LABEL_SLICES.start:LABEL_SLICES.stop], labels, steps=args.steps, patch_size=128,
                           batch_size=8, base=16, depth=3, seed=seed, device=args.device, checkpoint_every=0)
        bundle = job.run()
        planes = {"val": VAL_SLICES, "test": EVAL_SLICES}
        probs, imgs, truths = {}, {}, {}
        for split, rng in planes.items():
            imgs[split] = raw[rng.start:rng.stop]
            truths[split] = data["train_mem"][rng.start:rng.stop]
            _, probs[split] = run_predict(bundle, imgs[split], probabilities=True, device=args.device)
        rec = {"seed": seed, "regime": args.regime,
               "raw": {s: scores((probs[s].argmax(0) + 1).astype(np.uint8), truths[s])["dice"] for s in planes}}
        for backend in backends:
            t0 = time.perf_counter()
            default = {s: refined_dice(probs[s], imgs[s], truths[s], backend, DEFAULTS) for s in planes}
            seconds_per_plane = (time.perf_counter() - t0) / sum(len(r) for r in planes.values())
            if backend == backends[0]:
                best, best_val = None, -1.0
                for values in itertools.product(*(GRID[k] for k in keys)):
                    params = dict(DEFAULTS, **dict(zip(keys, values)))
                    d = refined_dice(probs["val"], imgs["val"], truths["val"], backend, params)
                    if d > best_val:
                        best, best_val = params, d
            else:
                best_val = refined_dice(probs["val"], imgs["val"], truths["val"], backend, best)
            rec[backend] = {"default": default, "chosen_params": best, "chosen_val": best_val,
                            "chosen_test": refined_dice(probs["test"], imgs["test"], truths["test"], backend, best),
                            "seconds_per_plane": seconds_per_plane}
            print(f"seed {seed} {backend}: raw test {rec['raw']['test']:.4f}, default CRF {default['test']:.4f}, "
                  f"chosen on val {rec[backend]['chosen_test']:.4f} with {best}", flush=True)
        runs.append(rec)
    headers = ["seed", "backend", "no CRF", "CRF, default parameters", "CRF, parameters chosen on slices 10..19",
               "CRF s/plane"]
    rows = [[r["seed"], b, f"{r['raw']['test']:.4f}", f"{r[b]['default']['test']:.4f}",
             f"{r[b]['chosen_test']:.4f}", f"{r[b]['seconds_per_plane']:.2f}"] for r in runs for b in backends]
    print(text_table(headers, rows))
    machine = machine_info()
    write_json(NAME, {"benchmark": NAME, "machine": machine, "grid": GRID, "defaults": DEFAULTS, "runs": runs})
    write_text(f"{NAME}.md", f"# CRF refinement of membrane predictions (ISBI 2012, {machine['date']})\n\n"
               f"Membrane Dice on slices 20..29; random init fine-tuned on regime {args.regime}, {args.steps} steps.\n\n"
               + markdown_table(headers, rows) + "\n")


if __name__ == "__main__":
    main()
