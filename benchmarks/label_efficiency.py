"""Label efficiency on ISBI 2012 (BENCHMARKS.md §1): membrane Dice against the amount of labels.

Split (shared/data/isbi2012/SOURCE.md): labels only from train slices 0..19, evaluation on train
slices 20..29 (never used for training), self-supervised pretraining on train slices 0..19 plus
the 30 test slices.

Regimes: ``k`` labeled slices (the dense truth of slices 0..k-1 given to fine-tuning as sparse
labels on the 20-slice training stack: cell = 1, membrane = 2 on those slices, 0 = not annotated
everywhere else) and ``scribble`` (~1 % of slice 0 painted as short strokes inside each class,
see scribbles.py).

Arms: ``random`` (random init), every pretext of core.pretext.PRETEXTS by name (pretrain, then
the same fine-tune), and ``rf`` (random forest on scikit-image multiscale features, 50 trees,
the same labeled pixels). Every network arm uses the same U-Net, fine-tuning recipe and budget.

Runs can be done piecewise; results accumulate in results/label_efficiency.json (one record per
arm/regime/seed/settings, replaced when re-run with ``--force``), and the Markdown table and
plot are rebuilt from all records each time. Pretrained bundles are cached in results/cache/.

Diagnostics (``--recipe``): ``plain`` fine-tunes with cross-entropy only and no augmentation (the
reference recipe of BENCHMARKS.md, to see whether a pretext's gain is absorbed by our recipe);
``probe`` trains only the 1x1 head on frozen features (a linear probe of what the pretext learned).

Example::

    python benchmarks/label_efficiency.py --arms random,rf,mim --regimes 1,2,5,20,scribble --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    RESULTS,
    have_matplotlib,
    load_isbi,
    machine_info,
    markdown_table,
    read_json,
    text_table,
    write_json,
    write_text,
)
from scribbles import scribble

from napari_regcon.core.checkpoint import load_bundle, save_bundle
from napari_regcon.core.metrics import dice
from napari_regcon.core.pretext import PRETEXTS
from napari_regcon.core.workflows import finetune_job, pretrain_job, run_predict

NAME = "label_efficiency"
CACHE = RESULTS / "cache"
LABEL_SLICES = range(0, 20)
EVAL_SLICES = range(20, 30)
VAL_SLICES = range(10, 20)  # held-out *training* slices for recipe choices (only with k <= 10)
MEMBRANE, CELL = 2, 1
REGIME_ORDER = ["scribble", "1", "2", "5", "20"]
SLICE_EQUIV = {"scribble": 0.01, "1": 1, "2": 2, "5": 5, "20": 20}


# ----------------------------------------------------------------------------- labels

def regime_labels(mem: np.ndarray, regime: str, seed: int = 0) -> np.ndarray:
    """Sparse labels (uint8, 0 = not annotated, 1 = cell, 2 = membrane) on the 20 label slices."""
    truth = mem[: len(LABEL_SLICES)].astype(np.uint8) + 1
    labels = np.zeros_like(truth)
    if regime == "scribble":
        labels[0] = scribble(truth[0], fraction=0.01, seed=seed)
    else:
        k = int(regime)
        if not 1 <= k <= len(LABEL_SLICES):
            raise SystemExit(f"regime {regime}: k must be in 1..{len(LABEL_SLICES)}")
        labels[:k] = truth[:k]
    return labels


def scores(pred: np.ndarray, truth_mem: np.ndarray) -> dict[str, float]:
    """Membrane Dice and IoU (and cell Dice) of a class-value prediction against the 0/1 truth."""
    t = truth_mem.astype(np.uint8) + 1
    d = dice(pred, t, MEMBRANE)
    return {"dice": d, "iou": d / (2 - d), "cell_dice": dice(pred, t, CELL)}


# ----------------------------------------------------------------------------- arms

def parse_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """``METHOD:KEY=VALUE`` items into {method: {key: value}} (values parsed as JSON when possible)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        method, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(method, {})[key] = parsed
    return out


def pretrained_bundle(method: str, data: dict, seed: int, steps: int, params: dict, args: argparse.Namespace
                      ) -> tuple[dict, dict]:
    """Pretrain ``method`` on train 0..19 + test 0..29 (cached); returns the bundle and timing info."""
    key = json.dumps({"m": method, "p": params, "base": args.base, "depth": args.depth, "patch": args.patch,
                      "bs": args.batch_size}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    path = CACHE / f"{method}_seed{seed}_steps{steps}_{digest}.pt"
    if path.exists() and not args.force_pretrain:
        bundle = load_bundle(path)
        return bundle, dict(bundle.get("training", {}).get("bench", {}), cached=True)
    images = [data["train_raw"][LABEL_SLICES.start:LABEL_SLICES.stop], data["test_raw"]]
    job = pretrain_job(images, method, ndim=2, patch_size=args.patch, steps=steps, batch_size=args.batch_size,
                       base=args.base, depth=args.depth, seed=seed, device=args.device, method_params=params,
                       checkpoint_every=0)
    t0 = time.perf_counter()
    bundle = job.run(callback=_printer(f"pretrain {method} seed {seed}", steps))
    info = {"pretrain_s": time.perf_counter() - t0, "pretrain_steps": steps,
            "pretrain_loss_last50": float(np.mean(bundle["history"]["loss"][-50:]))}
    bundle["training"]["bench"] = info
    CACHE.mkdir(parents=True, exist_ok=True)
    save_bundle(bundle, path)
    return bundle, dict(info, cached=False)


def _printer(label: str, total: int):
    every = max(1, total // 5)

    def cb(ev: Any) -> None:
        if ev.event == "step" and (ev.step % every == 0 or ev.step == total):
            print(f"  {label}: step {ev.step}/{total} loss {ev.loss:.4f} ({ev.step / max(ev.elapsed, 1e-9):.1f} steps/s)",
                  flush=True)
    return cb


def finetune_eval(data: dict, labels: np.ndarray, init: dict | None, seed: int, args: argparse.Namespace,
                  eval_slices: range) -> dict[str, Any]:
    """The common fine-tuning recipe (optionally with a frozen-encoder warm-up), then prediction and scores."""
    image = data["train_raw"][LABEL_SLICES.start:LABEL_SLICES.stop]
    common = {"patch_size": args.patch, "batch_size": args.batch_size, "base": args.base, "depth": args.depth,
              "seed": seed, "device": args.device, "lr": args.lr, "checkpoint_every": 0}
    t0 = time.perf_counter()
    freeze = args.freeze_encoder_steps if init is not None else 0
    if freeze:
        # linear-probe-then-fine-tune (methods spec §4.5.3): encoder frozen for the first steps
        job = finetune_job(image, labels, init=init, steps=freeze, **common)
        for p in job.model.encoder.parameters():
            p.requires_grad_(False)
        init = job.run()
    unlabeled = [data["test_raw"]] if args.semi else None  # ISBI's 30 unlabeled test slices (never evaluated)
    job = finetune_job(image, labels, init=init, steps=args.steps - freeze, unlabeled=unlabeled, **common)
    if args.recipe == "plain":
        # the reference recipe of BENCHMARKS.md §1: cross-entropy only, no augmentation
        job.task.augment, job.task.dice_weight = False, 0.0
    elif args.recipe == "probe":
        # a linear probe: only the 1x1 head learns, so the score measures the transferred features
        for name, prm in job.model.named_parameters():
            prm.requires_grad_(name.startswith("head."))
    bundle = job.run(callback=_printer("finetune", args.steps - freeze))
    ft_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    pred, _ = run_predict(bundle, data["train_raw"][eval_slices.start:eval_slices.stop], device=args.device)
    res = scores(pred, data["train_mem"][eval_slices.start:eval_slices.stop])
    res.update(finetune_s=ft_s, predict_s=time.perf_counter() - t1,
               finetune_loss_last50=float(np.mean(bundle["history"]["loss"][-50:])))
    return res


def rf_eval(data: dict, labels: np.ndarray, seed: int, args: argparse.Namespace, eval_slices: range
            ) -> dict[str, Any]:
    """Random forest (50 trees) on multiscale_basic_features, fit at the labeled pixels only."""
    from functools import partial

    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    feats = partial(multiscale_basic_features, intensity=True, edges=True, texture=True, sigma_min=1, sigma_max=16)
    raw = data["train_raw"].astype(np.float32) / 255.0
    t0 = time.perf_counter()
    xs, ys = [], []
    rng = np.random.default_rng(seed)
    planes = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    per_plane = -(-args.rf_max_samples // len(planes))  # cap the training pixels, spread over the planes
    for z in planes:
        where = np.flatnonzero(labels[z].ravel() > 0)
        if len(where) > per_plane:
            where = rng.choice(where, per_plane, replace=False)
        xs.append(feats(raw[z]).reshape(labels[z].size, -1)[where])
        ys.append(labels[z].ravel()[where])
    x, y = np.concatenate(xs), np.concatenate(ys)
    clf = RandomForestClassifier(n_estimators=50, n_jobs=torch.get_num_threads(), random_state=seed)
    clf.fit(x, y)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    pred = np.stack([clf.predict(feats(raw[z]).reshape(-1, x.shape[1])).reshape(raw.shape[1:]) for z in eval_slices])
    res = scores(pred.astype(np.uint8), data["train_mem"][eval_slices.start:eval_slices.stop])
    res.update(finetune_s=fit_s, predict_s=time.perf_counter() - t1, rf_samples=int(len(y)))
    return res


# ----------------------------------------------------------------------------- records and reports

def recipe_tags(lr: float, kind: str) -> list[str]:
    """Tags of a fine-tuning recipe that differs from the default (learning rate, loss/augmentation)."""
    return ([f"lr={lr:g}"] if lr != 1e-3 else []) + ([f"recipe={kind}"] if kind != "ours" else [])


def arm_id(arm: str, args: argparse.Namespace, params: dict) -> str:
    """The arm's name plus any non-default recipe choice, so variants never overwrite each other."""
    tags = []
    if arm not in ("random", "rf"):
        if params:
            tags += [f"{k}={v}" for k, v in sorted(params.items())]
        if args.transfer:
            tags.append(f"transfer={args.transfer}")
        if args.freeze_encoder_steps:
            tags.append(f"freeze={args.freeze_encoder_steps}")
    if arm != "rf":
        tags += recipe_tags(args.lr, args.recipe)
    return arm + ("+semi" if args.semi and arm != "rf" else "") + (f"[{','.join(tags)}]" if tags else "")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """An exclusive lock on the results file, so runs in parallel processes never drop each other's records."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{NAME}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_results() -> dict:
    """All records so far (read fresh: other processes may have added some)."""
    return read_json(NAME) or {"benchmark": NAME, "runs": []}


def save_record(rec: dict, machine: dict) -> None:
    """Add or replace one record in the results file (read-modify-write under the lock)."""
    with _locked():
        results = load_results()
        results["runs"] = [r for r in results["runs"] if record_key(r) != record_key(rec)] + [rec]
        results["machine"] = machine
        write_json(NAME, results)


def record_key(r: dict) -> tuple:
    return (r["arm"], r["regime"], r["seed"], r["eval"], r.get("finetune_steps"), r.get("pretrain_steps"))


def _group_name(r: dict) -> str:
    name = r["arm"] + (f" ({r['pretrain_steps']} pre)" if r.get("pretrain_steps") else "")
    if r.get("finetune_steps") not in (None, 400):
        name += f" [{r['finetune_steps']} ft steps]"
    return name


def _baseline_name(r: dict) -> str:
    """The random-init arm with the same fine-tuning recipe (steps, learning rate)."""
    recipe = r.get("recipe") or {}
    tags = recipe_tags(recipe.get("lr", 1e-3), recipe.get("kind", "ours"))
    return _group_name({"arm": "random" + (f"[{','.join(tags)}]" if tags else ""),
                        "finetune_steps": r.get("finetune_steps")})


def summarize(records: list[dict], eval_split: str = "test") -> tuple[list[str], list[list[str]], list[list[str]], dict]:
    """Per arm and regime: membrane Dice mean ± std over seeds (Δ points vs random init with the
    same recipe) and mean IoU. Returns headers, Dice rows, IoU rows and the raw statistics."""
    groups: dict[tuple, list[dict]] = {}
    base_of: dict[str, str] = {}
    for r in records:
        if r["eval"] != eval_split:
            continue
        name = _group_name(r)
        base_of[name] = _baseline_name(r)  # random init itself maps to itself (no Δ)
        groups.setdefault((name, r["regime"]), []).append(r)
    arms = sorted({a for a, _ in groups}, key=lambda a: (a != "rf", not a.startswith("random"), a))
    regimes = [g for g in REGIME_ORDER if any(k[1] == g for k in groups)]
    stats = {k: (float(np.mean([r["dice"] for r in v])), float(np.std([r["dice"] for r in v])), len(v),
                 float(np.mean([r["iou"] for r in v]))) for k, v in groups.items()}
    names = {"scribble": "scribbles (1% of slice 0)", "1": "1 slice"}
    headers = ["arm"] + [names.get(g, f"{g} slices") for g in regimes]
    rows, iou_rows = [], []
    for a in arms:
        row, irow = [a], [a]
        for g in regimes:
            if (a, g) not in stats:
                row.append("—")
                irow.append("—")
                continue
            m, sd, n, iou = stats[(a, g)]
            cell = f"{m:.3f} (n=1)" if n == 1 else f"{m:.3f} ± {sd:.3f}" + (f" (n={n})" if n != 3 else "")
            base = stats.get((base_of[a], g))
            if base_of[a] != a and base is not None:
                cell += f", Δ {100 * (m - base[0]):+.1f}"
            row.append(cell)
            irow.append(f"{iou:.3f}")
        rows.append(row)
        iou_rows.append(irow)
    return headers, rows, iou_rows, stats


def plot(stats: dict, path: Path) -> None:
    """Membrane Dice against labeled amount (slice equivalents, log scale), one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for arm in sorted({a for a, _ in stats}):
        pts = sorted((SLICE_EQUIV[g], *stats[(a, g)][:2]) for a, g in stats if a == arm)
        x, m, s = (np.array(v) for v in zip(*pts))
        ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=arm)
    ax.axhline(0.80, color="grey", ls=":", lw=1, label="goal at 1 slice (0.80)")
    ax.set_xscale("log")
    ax.set_xticks([0.01, 1, 2, 5, 20], ["scribbles\n(1% of 1)", "1", "2", "5", "20"])
    ax.set_xlabel("labeled pixels, in slices of ISBI 2012 (dense slices 0..k-1; scribbles ≈ 1% of slice 0)")
    ax.set_ylabel("membrane Dice, slices 20..29")
    ax.set_title("Label efficiency (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict) -> None:
    """Print and write the Markdown table (and the plot) from all accumulated records."""
    parts = [f"# Label efficiency on ISBI 2012 (updated {machine_info()['date']})", ""]
    for split, title in (("test", "Evaluation slices 20..29 (the benchmark)"),
                         ("val", "Held-out training slices 10..19 (recipe choices only)")):
        headers, rows, iou_rows, stats = summarize(results["runs"], split)
        if not rows:
            continue
        print(f"\n{title}: membrane Dice, mean ± std over seeds (n = 3 unless said), Δ = points vs random init\n"
              + text_table(headers, rows))
        parts += [f"## {title}", "", "Membrane Dice, mean ± std over seeds (n = 3 unless said); Δ = points against "
                  "random init with the same fine-tuning recipe.", "", markdown_table(headers, rows), "",
                  "Membrane IoU (mean over seeds):", "", markdown_table(headers, iou_rows), ""]
        if split == "test" and have_matplotlib():
            plot({k: v for k, v in stats.items() if "[" not in k[0]}, RESULTS / f"{NAME}.png")  # variants: tables only
            parts += [f"![label efficiency]({NAME}.png)", ""]
    write_text(f"{NAME}.md", "\n".join(parts))


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="random,rf", help="comma list: random, rf, or pretext names (%(default)s)")
    p.add_argument("--regimes", default="1,2,5,20,scribble", help="comma list of k and/or 'scribble'")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=400, help="fine-tuning steps (8 x 128² patches each)")
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--param", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="pretext constructor parameter, e.g. mim:ratio=0.6")
    p.add_argument("--transfer", default="", help="override transferred prefixes, e.g. 'encoder.' (comma list)")
    p.add_argument("--freeze-encoder-steps", type=int, default=0,
                   help="pretrained arms: train with the encoder frozen for the first N of --steps")
    p.add_argument("--semi", action="store_true",
                   help="semi-supervised fine-tuning (cross pseudo supervision + contrast) with the 30 unlabeled test slices")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    p.add_argument("--recipe", choices=["ours", "plain", "probe"], default="ours",
                   help="fine-tuning: ours = CE + Dice with flips/rotations/intensity jitter; plain = CE only, no "
                        "augmentation (the reference recipe of BENCHMARKS.md §1); probe = ours with every layer "
                        "but the 1x1 head frozen (a linear probe of the pretrained features)")
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--rf-max-samples", type=int, default=300_000, help="cap on RF training pixels (random subset)")
    p.add_argument("--eval", choices=["test", "val"], default="test",
                   help="test = slices 20..29 (benchmark); val = training slices 10..19 for recipe choices (k <= 10)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true", help="re-run records that exist")
    p.add_argument("--force-pretrain", action="store_true", help="ignore cached pretrained bundles")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table and plot")
    args = p.parse_args(argv)
    if args.recipe != "ours" and (args.semi or args.freeze_encoder_steps):
        raise SystemExit("--recipe plain/probe changes the supervised fine-tune only; it cannot be combined with "
                         "--semi or --freeze-encoder-steps")
    torch.set_num_threads(args.threads)

    results = load_results()
    if args.report_only:
        report(results)
        return
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    regimes = [g.strip() for g in args.regimes.split(",") if g.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    params = parse_params(args.param)
    for a in arms:
        if a not in ("random", "rf") and a not in PRETEXTS:
            raise SystemExit(f"unknown arm {a!r}; pretexts available now: {', '.join(sorted(PRETEXTS))}")
    eval_slices = EVAL_SLICES if args.eval == "test" else VAL_SLICES
    if args.eval == "val" and any(g != "scribble" and int(g) > VAL_SLICES.start for g in regimes):
        raise SystemExit("--eval val uses training slices 10..19, so only regimes with k <= 10 are allowed")
    data = load_isbi()
    machine = machine_info()
    print(f"label efficiency: arms {arms}, regimes {regimes}, seeds {seeds}, fine-tune {args.steps} steps of "
          f"{args.batch_size}x{args.patch}², eval {args.eval} slices {eval_slices.start}..{eval_slices.stop - 1}",
          flush=True)
    for seed in seeds:
        for arm in arms:
            pretext = arm not in ("random", "rf")
            aid = arm_id(arm, args, params.get(arm, {}))
            init, pre_info = None, {}
            for regime in regimes:
                rec = {"arm": aid, "method": arm, "regime": regime, "seed": seed, "eval": args.eval,
                       "finetune_steps": None if arm == "rf" else args.steps,
                       "pretrain_steps": args.pretrain_steps if pretext else None}
                if record_key(rec) in {record_key(r) for r in load_results()["runs"]} and not args.force:
                    print(f"skip {aid} {regime} seed {seed} (in results; --force to redo)")
                    continue
                if pretext and init is None:
                    init, pre_info = pretrained_bundle(arm, data, seed, args.pretrain_steps, params.get(arm, {}), args)
                    if args.transfer:
                        init = dict(init, pretext=dict(init["pretext"], transfer=args.transfer.split(",")))
                labels = regime_labels(data["train_mem"], regime, seed=0)
                print(f"run {aid} regime {regime} seed {seed} ({int((labels > 0).sum())} labeled pixels)", flush=True)
                if arm == "rf":
                    res = rf_eval(data, labels, seed, args, eval_slices)
                else:
                    res = finetune_eval(data, labels, init, seed, args, eval_slices)
                rec.update(res, labeled_pixels=int((labels > 0).sum()), pretrain=pre_info or None,
                           params=params.get(arm, {}) if pretext else None,
                           recipe={"kind": args.recipe, "lr": args.lr, "batch": args.batch_size, "patch": args.patch, "base": args.base,
                                   "depth": args.depth, "freeze_encoder_steps": args.freeze_encoder_steps if pretext else 0,
                                   "transfer": args.transfer or None},
                           date=machine["date"], machine={k: machine[k] for k in ("nproc", "cpu", "torch", "torch_threads")})
                print(f"  -> membrane Dice {res['dice']:.4f} IoU {res['iou']:.4f} "
                      f"(train {res['finetune_s']:.0f} s, predict {res['predict_s']:.0f} s)", flush=True)
                save_record(rec, machine)
    report(load_results())


if __name__ == "__main__":
    main()
