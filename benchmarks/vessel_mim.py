"""Masked image modelling on real two-photon vessel stacks (VesselNN): does the masking strategy matter?

Protocol (CPU, 2 shared cores):

- data: ``shared/data/vesselnn_2pm`` (BM4D-denoised two-photon mouse brain vasculature, 1 channel,
  5 µm z step, ~1 µm xy). Pretraining on the raw stacks 01-04; fine-tuning on stack 01;
  evaluation (vessel Dice) on the whole of stack 04, whose labels no arm ever sees (its raw data is
  part of the unlabeled pretraining set, as the issue asks: "pretrain on all four stacks").
- pretraining: 3D MIM, one run per masking strategy: ``random`` and ``intensity`` on the
  1-channel stacks; ``channel`` on a 2-channel construction (each stack plus a Gaussian-filtered,
  sigma 2 px in YX, copy of itself as channel 2) because VesselNN has a single channel. Mask
  cells follow the voxel size read from the TIFF tags (3x16x16 for 5 µm / 0.994 µm), ratio 0.6.
- fine-tuning: "25 %" = 4 of the 15 planes of stack 01 painted densely (planes 1, 5, 9, 13:
  background = 1, vessel = 2; the other planes 0 = not annotated); "full" = all 15 planes.
- arms: random init, each MIM strategy, random init on the 2-channel input (the fair baseline of
  the channel arm), and a random-forest pixel classifier (scikit-image multiscale_basic_features
  per plane + scikit-learn RandomForestClassifier, 50 trees) with the same labels.

Run: ``python benchmarks/vessel_mim.py`` (``--quick`` for a smoke run). Writes
``benchmarks/results/vessel_mim.json`` and ``vessel_mim.md``; results are saved after every arm
and an interrupted run continues where it stopped (same settings).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine_info,
    markdown_table,
    read_json,
    recipe_spec,
    text_table,
    write_json,
    write_text,
)

from napari_regcon.core.io import read_voxel_size  # noqa: E402
from napari_regcon.core.metrics import dice  # noqa: E402
from napari_regcon.core.pretext.mim import anisotropic_cell  # noqa: E402
from napari_regcon.core.workflows import finetune_job, pretrain_job, run_predict  # noqa: E402

VESSEL = Path(os.environ.get("REGCON_VESSELNN", "/work/shared/data/vesselnn_2pm"))
NAME = "vessel_mim"
# pretraining is self-supervised: it may see every raw stack, the evaluation stack included (as the
# ISBI split pretrains on the test slices); no labels of stack 04 are ever used
PRETRAIN_STACKS, TRAIN_STACK, EVAL_STACK = ("01", "02", "03", "04"), "01", "04"
FEW_PLANES = (1, 5, 9, 13)
BACKGROUND, VESSEL_CLASS = 1, 2
MASK_CELL_XY = 16  # MIM mask cell edge in YX pixels (Z follows the voxel size in 3D)
DEFAULT_PATCH = {3: "8,64,64", 2: "128,128"}

# arm name -> (pretraining mask or None, channels, label regime)
ARMS: dict[str, tuple[str | None, int, str]] = {
    "random init": (None, 1, "25%"),
    "MIM random": ("random", 1, "25%"),
    "MIM intensity": ("intensity", 1, "25%"),
    "random init (2-ch)": (None, 2, "25%"),
    "MIM channel (2-ch)": ("channel", 2, "25%"),
    "random init, full": (None, 1, "full"),
    "MIM intensity, full": ("intensity", 1, "full"),
    "semi-supervised": (None, 1, "25%"),
}
# arms fine-tuned semi-supervised (cross pseudo supervision + patch / pixel contrast, the third paper), with the
# other stacks' raw data (never their labels) as the unlabeled pool besides stack 01's unlabeled planes
SEMI_ARMS = {"semi-supervised"}


def load(name: str, kind: str = "raw") -> np.ndarray:
    import tifffile
    return tifffile.imread(VESSEL / f"{kind}_{name}.tif")


def two_channel(raw: np.ndarray) -> np.ndarray:
    """The stack plus a Gaussian-filtered (sigma 2 px in YX) copy of itself: (Z, Y, X, 2) float32."""
    from scipy import ndimage
    raw = raw.astype(np.float32)
    return np.stack([raw, ndimage.gaussian_filter(raw, sigma=(0, 2, 2))], axis=-1)


def sparse_labels(truth01: np.ndarray, regime: str) -> np.ndarray:
    """Painted labels for fine-tuning: background 1, vessel 2, 0 = not annotated."""
    full = (truth01 > 0).astype(np.uint8) + 1
    if regime == "full":
        return full
    out = np.zeros_like(full)
    out[list(FEW_PLANES)] = full[list(FEW_PLANES)]
    return out


def random_forest(train_raw: np.ndarray, labels: np.ndarray, eval_raw: np.ndarray, seed: int,
                  per_class: int = 20000) -> tuple[np.ndarray, float]:
    """Per-plane multiscale filter features + a 50-tree random forest (the ilastik / convpaint anchor)."""
    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    def feats(plane: np.ndarray) -> np.ndarray:
        return multiscale_basic_features(plane.astype(np.float32), sigma_min=1, sigma_max=16)

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    planes = [z for z in range(labels.shape[0]) if labels[z].any()]
    for z in planes:
        f = feats(train_raw[z])
        for value in (BACKGROUND, VESSEL_CLASS):
            idx = np.flatnonzero(labels[z].ravel() == value)
            idx = rng.choice(idx, min(len(idx), per_class // len(planes)), replace=False)
            xs.append(f.reshape(-1, f.shape[-1])[idx])
            ys.append(np.full(len(idx), value, np.uint8))
    clf = RandomForestClassifier(n_estimators=50, max_depth=16, n_jobs=2, random_state=seed)
    clf.fit(np.concatenate(xs), np.concatenate(ys))
    pred = np.stack([clf.predict(feats(p).reshape(-1, clf.n_features_in_)).reshape(p.shape) for p in eval_raw])
    return pred.astype(np.uint8), time.perf_counter() - t0


def run(args: argparse.Namespace, name: str = NAME) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    settings = {"pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps, "patch": args.patch,
                "batch_size": args.batch_size, "base": args.base, "depth": args.depth, "mask_ratio": args.mask_ratio,
                "lr": args.lr, "pretrain_stacks": list(PRETRAIN_STACKS)}
    if args.ndim == 2:  # (absent for 3D, so earlier 3D results still resume)
        settings["ndim"] = 2
    if args.recipe:  # (absent by default, so earlier results still resume)
        settings["recipe"] = args.recipe
    if args.ndim == 3 and args.voxel_model:  # the network follows the voxel size (absent in earlier results)
        settings["voxel_model"] = True
    recipe, recipe_params = recipe_spec(args.recipe)
    previous = read_json(name) if not args.fresh else None
    done: dict[str, Any] = previous["runs"] if previous and previous.get("settings") == settings else {}
    voxel = read_voxel_size(VESSEL / f"raw_{TRAIN_STACK}.tif")
    patch = tuple(int(v) for v in args.patch.split(","))
    cell = anisotropic_cell(MASK_CELL_XY, voxel)
    model_voxel = voxel if args.voxel_model else None
    raws = {s: load(s) for s in (*PRETRAIN_STACKS, EVAL_STACK)}
    truth01 = load(TRAIN_STACK, "labels")
    truth_eval = (load(EVAL_STACK, "labels") > 0).astype(np.uint8) + 1
    images = {1: raws, 2: {s: two_channel(r) for s, r in raws.items()}}
    machine = machine_info()
    invocations = (previous.get("invocations", []) if done and previous else []) + \
        [{"date": machine["date"], "command": machine["command"], "new_runs": []}]
    result: dict[str, Any] = {"machine": machine, "settings": settings, "voxel_size_zyx_um": voxel,
                              "mask_cell_zyx": list(cell), "invocations": invocations, "runs": done}
    arms = [a for a in ARMS if not args.arms or a in args.arms]

    def save() -> None:
        write_json(name, result)

    for seed in range(args.seeds):
        pretrained: dict[tuple[str, int], dict] = {}
        for arm in arms:
            key = f"{arm} | seed {seed}"
            if key in done:
                continue
            mask, channels, regime = ARMS[arm]
            ch_axis = -1 if channels == 2 else None
            imgs = images[channels]
            rec: dict[str, Any] = {"arm": arm, "seed": seed, "regime": regime, "channels": channels}
            init = None
            if mask is not None:
                if (mask, channels) not in pretrained:
                    t0 = time.perf_counter()
                    job = pretrain_job([imgs[s] for s in PRETRAIN_STACKS], "mim", ndim=args.ndim, channel_axis=ch_axis,
                                       patch_size=patch, steps=args.pretrain_steps, batch_size=args.batch_size,
                                       lr=args.lr, base=args.base, depth=args.depth, seed=seed, device="cpu",
                                       checkpoint_every=0, voxel_size=model_voxel,
                                       method_params={"mask": mask, "ratio": args.mask_ratio, "patch": MASK_CELL_XY,
                                                      "voxel_size": voxel})
                    bundle = job.run()
                    loss = bundle["history"]["loss"]
                    pretrained[(mask, channels)] = bundle
                    rec["pretrain"] = {"seconds": time.perf_counter() - t0, "steps": args.pretrain_steps,
                                       "loss_first10": float(np.mean(loss[:10])), "loss_last10": float(np.mean(loss[-10:]))}
                init = pretrained[(mask, channels)]
            t0 = time.perf_counter()
            unlabeled = [imgs[s] for s in PRETRAIN_STACKS if s != TRAIN_STACK] if arm in SEMI_ARMS else None
            job = finetune_job(imgs[TRAIN_STACK], sparse_labels(truth01, regime), init=init, ndim=args.ndim,
                               unlabeled=unlabeled,
                               channel_axis=ch_axis, patch_size=patch, steps=args.finetune_steps,
                               batch_size=args.batch_size, lr=args.lr, base=args.base, depth=args.depth, seed=seed,
                               device="cpu", checkpoint_every=0, recipe=recipe, recipe_params=recipe_params,
                               voxel_size=model_voxel)
            model = job.run()
            rec["recipe"] = job.info["recipe"].name
            rec["finetune_steps_run"] = int(model["training"]["step"])
            rec["finetune_seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            pred, _ = run_predict(model, imgs[EVAL_STACK], channel_axis=ch_axis, device="cpu")
            rec["predict_seconds"] = time.perf_counter() - t0
            rec["dice"] = dice(pred, truth_eval, VESSEL_CLASS)
            done[key] = rec
            invocations[-1]["new_runs"].append(key)
            save()
            print(f"[{NAME}] {key}: vessel Dice {rec['dice']:.3f} (fine-tune {rec['finetune_seconds']:.0f} s)",
                  file=sys.stderr, flush=True)
        for regime in ("25%", "full"):
            key = f"random forest, {regime} | seed {seed}"
            if key in done or (args.arms and f"random forest, {regime}" not in args.arms):
                continue
            pred, seconds = random_forest(raws[TRAIN_STACK], sparse_labels(truth01, regime), raws[EVAL_STACK], seed)
            done[key] = {"arm": f"random forest, {regime}", "seed": seed, "regime": regime, "channels": 1,
                         "dice": dice(pred, truth_eval, VESSEL_CLASS), "finetune_seconds": seconds}
            invocations[-1]["new_runs"].append(key)
            save()
            print(f"[{NAME}] {key}: vessel Dice {done[key]['dice']:.3f}", file=sys.stderr, flush=True)
    result["summary"] = summarise(done)
    save()
    return result


def summarise(runs: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean, std and Δ against the matching random-init arm, per arm."""
    by_arm: dict[str, list[dict]] = {}
    for rec in runs.values():
        by_arm.setdefault(rec["arm"], []).append(rec)
    base = {(1, "25%"): "random init", (2, "25%"): "random init (2-ch)", (1, "full"): "random init, full"}
    rows = []
    for arm, recs in by_arm.items():
        d = [r["dice"] for r in recs]
        ref = base.get((recs[0]["channels"], recs[0]["regime"])) if not arm.startswith("random") else None
        ref_d = {r["seed"]: r["dice"] for r in by_arm.get(ref, [])} if ref else {}
        delta = [r["dice"] - ref_d[r["seed"]] for r in recs if r["seed"] in ref_d]
        pre = [r["pretrain"]["seconds"] for r in recs if "pretrain" in r]
        rows.append({"arm": arm, "regime": recs[0]["regime"], "channels": recs[0]["channels"], "n_seeds": len(d),
                     "dice_mean": float(np.mean(d)), "dice_std": float(np.std(d)),
                     "delta_vs_random_init": float(np.mean(delta)) if delta else None,
                     "finetune_seconds": statistics.median(r["finetune_seconds"] for r in recs),
                     "pretrain_seconds": statistics.median(pre) if pre else None})
    order = list(ARMS) + ["random forest, 25%", "random forest, full"]
    return sorted(rows, key=lambda r: order.index(r["arm"]) if r["arm"] in order else 99)


def report(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]]]:
    s = result["settings"]
    headers = ["arm", "labels", "ch", "seeds", "vessel Dice", "Δ vs random init", "pretrain s", "fine-tune s"]
    rows = [[r["arm"], r["regime"], r["channels"], r["n_seeds"], f"{r['dice_mean']:.3f} ± {r['dice_std']:.3f}",
             "" if r["delta_vs_random_init"] is None else f"{r['delta_vs_random_init']:+.3f}",
             "" if r["pretrain_seconds"] is None else f"{r['pretrain_seconds']:.0f}", f"{r['finetune_seconds']:.0f}"]
            for r in result["summary"]]
    m = result["machine"]
    runs = "; ".join(f"`{i['command']}` ({i['date']}, {len(i['new_runs'])} runs)"
                     for i in result.get("invocations", []) if i["new_runs"])
    nd = s.get("ndim", 3)
    axes, cells = ("ZYX", "x".join(map(str, result["mask_cell_zyx"]))) if nd == 3 else ("YX", f"{MASK_CELL_XY}x{MASK_CELL_XY}")
    head = (f"# VesselNN: {nd}D MIM masking strategies → fine-tune → vessel Dice on stack {EVAL_STACK}\n\n"
            f"{m['cpu']} ({m['nproc']} cores, shared), torch {m['torch']}, 1 torch thread. Produced by: {runs}.\n\n"
            f"Pretraining on raw stacks {', '.join(PRETRAIN_STACKS)} ({s['pretrain_steps']} steps), fine-tuning on stack "
            f"{TRAIN_STACK} ({s['finetune_steps']} steps; 25% = planes {', '.join(map(str, FEW_PLANES))} of 15, full = all 15), "
            f"{nd}D U-Net base {s['base']} depth {s['depth']}, patches {s['patch']} ({axes}), batch {s['batch_size']}, "
            f"mask ratio {s['mask_ratio']}, mask cells {cells} (TIFF voxel size "
            f"{result['voxel_size_zyx_um']} µm). 2-ch = each stack plus a Gaussian-filtered (sigma 2 px in YX) copy of "
            f"itself, because VesselNN has one channel. Mean ± std over seeds; Δ is paired per seed against random init "
            f"with the same channels and labels.\n\n")
    return head, headers, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pretrain-steps", type=int, default=1500, help="about 5 min on one CPU thread (budget 10)")
    p.add_argument("--finetune-steps", type=int, default=600, help="about 2 min on one CPU thread (budget 3)")
    p.add_argument("--ndim", type=int, choices=(2, 3), default=3,
                   help="3: a 3D U-Net on ZYX patches (default); 2: a 2D U-Net on the planes (results in vessel_mim_2d)")
    p.add_argument("--patch", default=None, help="patch size, comma list (default 8,64,64 in 3D, 128,128 in 2D)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--base", type=int, default=8)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine, 2 threads per process oversubscribe "
                        "the cores and run several times slower)")
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mask-ratio", type=float, default=0.6)
    p.add_argument("--no-voxel-model", dest="voxel_model", action="store_false",
                   help="3D: a network that ignores the voxel size (3x3x3 convolutions everywhere, as before)")
    p.add_argument("--recipe", default=None,
                   help="fine-tuning recipe NAME[:key=value,...] (default: auto, as the product picks it)")
    p.add_argument("--arms", nargs="*", default=None, help="only these arms (names as in the table)")
    p.add_argument("--fresh", action="store_true", help="ignore results of a previous run")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 5 steps, tiny net (results not meaningful)")
    p.add_argument("--name", default=None, help="results file name (default vessel_mim[_2d][_quick])")
    args = p.parse_args(argv)
    args.patch = args.patch or DEFAULT_PATCH[args.ndim]
    if args.quick:
        args.seeds, args.pretrain_steps, args.finetune_steps, args.base, args.depth = 1, 5, 5, 4, 2
    name = NAME + ("_2d" if args.ndim == 2 else "") + ("_quick" if args.quick else "")
    if args.recipe:
        name += "_" + "".join(c if c.isalnum() else "_" for c in args.recipe)
    if args.ndim == 3 and args.voxel_model:
        name += "_voxel"
    name = args.name or name
    result = run(args, name)
    head, headers, rows = report(result)
    print(text_table(headers, rows))
    write_text(f"{name}.md", head + markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
