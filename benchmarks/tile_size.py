"""Prediction tile size: Dice and speed of the same trained model predicted with different tiles.

The U-Net normalises with GroupNorm, whose statistics are taken over each tile, so what a model
predicts at a pixel depends a little on the tile around it: seams in the uncertainty map, and a
Dice that moves with the tile size. This benchmark trains models the way users do (brush strokes
on one plane with the ``strokes`` recipe; one densely labeled plane) and predicts the held-out
planes with each tile size / overlap, timing the predictions interleaved plane by plane.

    python benchmarks/tile_size.py --dataset isbi --seeds 0,1,2 --threads 1
    python benchmarks/tile_size.py --dataset vessel2d --seeds 0,1,2 --threads 1

Models are cached in results/cache; results accumulate in results/tile_size.json / .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from typing import Any

import numpy as np
import torch
from _common import (
    RESULTS,
    machine_info,
    markdown_table,
    read_json,
    recipe_spec,
    text_table,
    write_json,
    write_text,
)
from annotation_loop import first_strokes, load_dataset

from napari_regcon.core.checkpoint import load_bundle, save_bundle
from napari_regcon.core.metrics import dice
from napari_regcon.core.workflows import finetune_job, run_predict

NAME = "tile_size"
CACHE = RESULTS / "cache"


def trained(data: Any, labels_kind: str, seed: int, steps: int, recipe: str | None = None) -> dict:
    """A model fine-tuned on strokes (1 % of the painted planes) or on the dense painted planes (cached);
    ``recipe`` is ``NAME[:key=value,...]`` (default: the one the product picks)."""
    spec = {"d": data.name, "l": labels_kind, "s": seed, "steps": steps}
    if recipe:
        spec["r"] = recipe
    key = json.dumps(spec, sort_keys=True)
    path = CACHE / f"tile_{data.name}_{labels_kind}_{hashlib.sha1(key.encode()).hexdigest()[:8]}.pt"
    if path.exists():
        return load_bundle(path)
    if labels_kind == "strokes":
        labels = first_strokes(data, 0.01, seed)
    else:
        labels = np.zeros_like(data.truth)
        labels[data.paint_planes] = data.truth[data.paint_planes]
    name, params = recipe_spec(recipe)
    job = finetune_job(data.image, labels, ndim=data.ndim, patch_size=data.patch, steps=steps,
                       batch_size=data.batch_size, seed=seed, checkpoint_every=0, recipe=name, recipe_params=params)
    bundle = job.run()
    CACHE.mkdir(parents=True, exist_ok=True)
    save_bundle(bundle, path)
    return bundle


#: evaluation sets from the stack the labels are on: the product adds the labels' class prior there (it
#: recognises the whole image it was trained on; the planes are predicted one by one here)
SAME_STACK = {"slices 20-29", "stack 01 unpainted"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="isbi", choices=["isbi", "vessel2d"])
    p.add_argument("--labels", default="strokes,dense", help="comma-separated: strokes, dense")
    p.add_argument("--tiles", default="128/0.25,128/0.5,256/0.25,256/0.5,384/0.25,512/0",
                   help="comma-separated TILE/OVERLAP")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--recipe", default=None, help="fine-tuning recipe NAME[:key=value,...] (default: as the product picks)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    tiles = [(int(t), float(o)) for t, o in (s.split("/") for s in args.tiles.split(","))]
    records = []
    for kind in args.labels.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            bundle = trained(data, kind, seed, args.steps, args.recipe)
            kind_name = kind + (f" ({args.recipe})" if args.recipe else "")
            for ev, (img, truth) in data.evals.items():
                secs = {t: 0.0 for t in tiles}
                preds = {t: np.zeros(truth.shape, np.uint8) for t in tiles}
                for z in range(len(img)):  # interleaved plane by plane, the order rotating
                    order = tiles[z % len(tiles):] + tiles[:z % len(tiles)]
                    for t in order:
                        t0 = time.perf_counter()
                        lab, _ = run_predict(bundle, img[z:z + 1], tile=t[0], overlap=t[1],
                                             class_prior="on" if ev in SAME_STACK else "auto")
                        secs[t] += time.perf_counter() - t0
                        preds[t][z] = np.asarray(lab)[0]
                mp = img[0].size * len(img) / 1e6
                for t in tiles:
                    rec = {"dataset": data.name, "labels": kind_name, "seed": seed, "eval": ev, "tile": t[0],
                           "overlap": t[1], "dice": dice(preds[t], truth, data.target), "mp_s": mp / secs[t],
                           "differ_vs_256": float(np.mean(preds[t] != preds[(256, 0.25)]))
                           if (256, 0.25) in preds else float("nan")}
                    records.append(rec)
                    print(f"[{data.name} {kind_name} seed {seed} {ev}] tile {t[0]}/{t[1]}: Dice {rec['dice']:.4f}, "
                          f"{rec['mp_s']:.3f} MP/s, {100 * rec['differ_vs_256']:.2f} % labels ≠ 256/0.25", flush=True)
    stored = read_json(NAME) or {"records": [], "machine": []}
    keys = {(r["dataset"], r["labels"], r["seed"], r["eval"], r["tile"], r["overlap"]) for r in records}
    stored["records"] = [r for r in stored["records"]
                         if (r["dataset"], r["labels"], r["seed"], r["eval"], r["tile"], r["overlap"]) not in keys]
    stored["records"] += records
    stored["machine"] = (stored.get("machine") or [])[-10:] + [machine_info()]
    write_json(NAME, stored)
    groups: dict[tuple, list[dict]] = {}
    for r in stored["records"]:
        groups.setdefault((r["dataset"], r["labels"], r["eval"], r["tile"], r["overlap"]), []).append(r)
    headers = ["dataset", "labels", "eval", "tile / overlap", "seeds", "Dice", "MP/s", "labels ≠ 256/0.25"]
    rows = []
    for (ds, kind, ev, t, o), rs in sorted(groups.items()):
        d = np.array([r["dice"] for r in rs])
        rows.append([ds, kind, ev, f"{t} / {o}", str(len(rs)), f"{d.mean():.4f} ± {d.std():.4f}",
                     f"{np.mean([r['mp_s'] for r in rs]):.3f}",
                     f"{100 * np.mean([r['differ_vs_256'] for r in rs]):.2f} %"])
    print(text_table(headers, rows))
    write_text(f"{NAME}.md", "# Prediction tile size\n\n" + markdown_table(headers, rows))


if __name__ == "__main__":
    main()
