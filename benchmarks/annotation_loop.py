"""The loop a biologist runs: a few strokes, look at the prediction, paint where it is wrong, train again.

A simulated annotator paints brush strokes (a line inside one object, a few px wide, tens of px
long; see scribbles.py) on the planes it annotates. Round 0: about ``--first`` of those planes
painted, split over the classes. Each later round it looks at the current prediction of those
planes and paints strokes (``--per-round`` of a plane) into the largest regions where each class
was missed, then the arm trains again: a network continues from its current model (the widget's
"Fine-tune again"), the random forest refits on all strokes. Every round
records the Dice of held-out planes, the painted pixels and the round's wall time (training +
predicting the painted planes, what the user waits for).

Datasets:
- ``isbi``: ISBI 2012 membranes; strokes on slice 0 of the 20 training slices, Dice of membrane
  on slices 20..29 (never painted); pretraining (``mim``/``glrp``/...) on slices 0..19 + the 30
  test slices.
- ``vessel2d`` / ``vessel3d``: VesselNN two-photon vessels, a 2D or a 3D U-Net; strokes on planes
  4, 7 and 10 of stack 01, vessel Dice on the unpainted planes of stack 01 and on all of stack 04.

Arms: ``rf`` (random forest, 50 trees, scikit-image multiscale features, as ilastik), ``random``
(random init, the recipe ``--recipe``), a pretext name (pretrained first, cached), ``semi``
(``--unlabeled``: the semi-supervised task with the stack as unlabeled pool), ``ens`` (a random-init
network and the forest fit on the same strokes, their probabilities averaged; the record also
keeps the Dice of each alone). ``ARM@RECIPE`` or
``ARM@RECIPE:key=value,...`` picks another recipe (e.g. ``random@dense`` is the recipe before
this benchmark existed) or changes its settings; ``patch=``, ``batch=``, ``precision=``, ``base=`` and
``depth=`` there set the job's patch size, batch size, arithmetic and network width / depth instead (the arm's string is split at commas first,
so give one such setting per arm).

    python benchmarks/annotation_loop.py --dataset isbi --arms rf,random,random@dense --seeds 0,1,2 --threads 1

Results accumulate in results/annotation_loop.json (one record per dataset/arm/seed/settings),
the table in annotation_loop.md and the plot annotation_loop_<dataset>.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import dataclass
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
from scipy import ndimage as ndi
from scribbles import _trace, scribble
from skimage.morphology import disk, skeletonize

from napari_regcon.core.checkpoint import load_bundle, save_bundle
from napari_regcon.core.metrics import dice
from napari_regcon.core.options import DEFAULT_BASE
from napari_regcon.core.workflows import finetune_job, pretrain_job, run_predict

NAME = "annotation_loop"
CACHE = RESULTS / "cache"
VESSEL = Path(os.environ.get("REGCON_VESSELNN", "/work/shared/data/vesselnn_2pm"))


# ----------------------------------------------------------------------------- data

@dataclass
class Dataset:
    """A training stack with its truth (class values 1..K), the planes the annotator paints, held-out sets."""

    name: str
    ndim: int
    image: np.ndarray  # (Z, Y, X)
    truth: np.ndarray  # (Z, Y, X) class values 1..K
    paint_planes: list[int]
    evals: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (image, truth) held out
    target: int  # the class whose Dice is reported
    radius: dict[int, int]  # brush radius per class
    pretrain_images: list[np.ndarray]
    patch: str
    batch_size: int
    voxel: tuple[float, ...] | None = None  # (Z, Y, X) from the file: a 3D network follows it


def load_dataset(name: str) -> Dataset:
    """The data of one benchmark dataset (see the module docstring)."""
    if name == "isbi":
        d = load_isbi()
        truth = d["train_mem"].astype(np.uint8) + 1  # 1 cell, 2 membrane
        return Dataset("isbi", 2, d["train_raw"][:20], truth[:20], [0],
                       {"slices 20-29": (d["train_raw"][20:30], truth[20:30])}, 2, {1: 2, 2: 1},
                       [d["train_raw"][:20], d["test_raw"]], "128", 8)
    if name in ("vessel2d", "vessel3d"):
        import tifffile

        def read(kind: str, n: str) -> np.ndarray:
            return tifffile.imread(VESSEL / f"{kind}_{n}.tif")
        raw1, lab1 = read("raw", "01"), read("labels", "01").astype(np.uint8) + 1  # 1 background, 2 vessel
        raw4, lab4 = read("raw", "04"), read("labels", "04").astype(np.uint8) + 1
        paint = [4, 7, 10]
        rest = [z for z in range(raw1.shape[0]) if z not in paint]
        evals = {"stack 01 unpainted": (raw1[rest], lab1[rest]), "stack 04": (raw4, lab4)}
        ndim = 2 if name == "vessel2d" else 3
        from napari_regcon.core.io import read_voxel_size

        return Dataset(name, ndim, raw1, lab1, paint, evals, 2, {1: 2, 2: 2},
                       [raw1, read("raw", "02"), read("raw", "03"), raw4], "128" if ndim == 2 else "8,128,128",
                       8 if ndim == 2 else 4, read_voxel_size(VESSEL / "raw_01.tif"))
    raise SystemExit(f"unknown dataset {name!r}")


# ----------------------------------------------------------------------------- the annotator

def first_strokes(data: Dataset, fraction: float, seed: int) -> np.ndarray:
    """Round 0: strokes on ``fraction`` of each painted plane, split equally over the classes."""
    labels = np.zeros(data.truth.shape, np.uint8)
    for i, z in enumerate(data.paint_planes):
        labels[z] = scribble(data.truth[z], fraction=fraction, seed=seed * 1000 + i, radius=data.radius)
    return labels


def correction_strokes(truth: np.ndarray, pred: np.ndarray, labels: np.ndarray, painted: np.ndarray,
                       budget: int, radius: dict[int, int], rng: np.random.Generator, accept: bool = False,
                       length: tuple[int, int] = (25, 60)) -> np.ndarray:
    """Strokes of the right class into the largest regions of one plane where each class was missed.

    A stroke starts at the centre of an error region (its distance-transform maximum), follows
    the region's skeleton and is clipped to the true class and to pixels the annotator has not
    painted, as a person painting over a wrong blob would. With ``accept`` the annotator first
    accepts the prediction into the unpainted pixels ("Accept this slice's prediction") and
    then paints over what is wrong in it. Returns the new labels of the plane; ``painted`` (the
    pixels the annotator's brush touched) is updated in place.
    """
    out = labels.copy()
    if accept:
        out[~painted] = pred[~painted]
    classes = [int(c) for c in np.unique(truth) if c > 0]
    per_class = budget // len(classes)
    for c in classes:
        err = (truth == c) & (pred != c) & ~painted  # with accept, out == pred on these pixels
        comps, n = ndi.label(err)
        if n == 0:
            continue
        sizes = ndi.sum_labels(err, comps, index=np.arange(1, n + 1))
        done = 0
        for k in np.argsort(sizes)[::-1]:
            if done >= per_class or sizes[k] < 12:  # smaller than a brush dab: not worth a stroke
                break
            region = comps == k + 1
            dist = ndi.distance_transform_edt(region)
            start = tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), region.shape))
            skel = skeletonize(region)
            skel[start] = True
            path = _trace(skel, start, int(rng.integers(*length)), rng)
            stroke = np.zeros_like(region)
            stroke[tuple(np.array(path).T)] = True
            stroke = ndi.binary_dilation(stroke, disk(radius[c])) & (truth == c) & ~painted
            take = np.argwhere(stroke)[: per_class - done]
            out[tuple(take.T)] = c
            painted[tuple(take.T)] = True
            done += len(take)
    return out


# ----------------------------------------------------------------------------- arms

def split_arms(text: str) -> list[str]:
    """``--arms`` into arm specs: commas separate arms, except before another ``k=v`` of the same arm
    (``random@strokes:smoothness=1,retrain_smoothness=3`` is one arm)."""
    specs: list[str] = []
    for token in filter(None, text.split(",")):
        if specs and "=" in token and "@" not in token and ":" in specs[-1]:
            specs[-1] += "," + token
        else:
            specs.append(token)
    return specs


def parse_arm(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``ARM[@RECIPE[:k=v,...]]`` into (arm, recipe, overrides)."""
    arm, _, rest = spec.partition("@")
    recipe, _, kvs = rest.partition(":")
    params: dict[str, Any] = {}
    for kv in filter(None, kvs.split(",")):
        k, _, v = kv.partition("=")
        if ";" in v:  # a list: filter_scales=1;2;4;8
            params[k] = [json.loads(x) for x in v.split(";") if x]
            continue
        try:
            params[k] = json.loads(v) if v not in ("", None) else True
        except json.JSONDecodeError:  # a word: precision=fp32
            params[k] = v
    return arm, recipe or "auto", params


def pretrained(data: Dataset, method: str, seed: int, steps: int, args: argparse.Namespace) -> tuple[dict, float]:
    """A pretrained bundle for ``method`` on the dataset's pretraining stacks (cached); (bundle, seconds)."""
    spec = {"d": data.name, "m": method, "steps": steps, "patch": data.patch, "bs": data.batch_size,
            "ndim": data.ndim, "seed": seed}
    if data.ndim == 3 and data.voxel:  # the network follows the voxel size (absent from earlier cache keys)
        spec["voxel"] = list(data.voxel)
    key = json.dumps(spec, sort_keys=True)
    path = CACHE / f"loop_{data.name}_{method}_{hashlib.sha1(key.encode()).hexdigest()[:8]}.pt"
    if path.exists():
        bundle = load_bundle(path)
        return bundle, float(bundle["training"].get("bench_seconds", float("nan")))
    t0 = time.perf_counter()
    job = pretrain_job(data.pretrain_images, method, ndim=data.ndim, patch_size=data.patch, steps=steps,
                       batch_size=data.batch_size, seed=seed, device=args.device, checkpoint_every=0,
                       voxel_size=data.voxel)
    bundle = job.run()
    bundle["training"]["bench_seconds"] = time.perf_counter() - t0
    CACHE.mkdir(parents=True, exist_ok=True)
    save_bundle(bundle, path)
    return bundle, bundle["training"]["bench_seconds"]


class NetworkArm:
    """A U-Net trained through core's finetune_job, continued from its own model each round."""

    def __init__(self, data: Dataset, recipe: str, params: dict, init: dict | None, seed: int,
                 args: argparse.Namespace, unlabeled: list[np.ndarray] | None = None) -> None:
        params = dict(params)
        self.patch = str(params.pop("patch", data.patch))  # job settings in an arm's spec, not the recipe's
        self.batch_size = int(params.pop("batch", data.batch_size))
        self.precision = str(params.pop("precision", "auto"))
        self.arch = {k: int(params.pop(k)) for k in ("base", "depth") if k in params}  # the network's width / depth
        self.data, self.recipe, self.params, self.init, self.seed, self.args = data, recipe, params, init, seed, args
        self.unlabeled = unlabeled
        self.bundle: dict | None = None
        self.steps_run = 0
        self.changed_trace: list[tuple[int, float]] = []

    def fit(self, labels: np.ndarray, round_: int) -> None:
        steps = self.args.steps if round_ == 0 else self.args.retrain_steps
        init = self.init if self.bundle is None else self.bundle
        job = finetune_job(self.data.image, labels, init=init, ndim=self.data.ndim, patch_size=self.patch,
                           steps=steps, batch_size=self.batch_size, seed=self.seed + 101 * round_,
                           device=self.args.device, precision=self.precision, checkpoint_every=0,
                           unlabeled=self.unlabeled,
                           recipe=self.recipe, recipe_params=self.params, voxel_size=self.data.voxel, **self.arch)
        trace: list[tuple[int, float]] = []
        self.bundle = job.run(callback=lambda ev: trace.append((ev.step, ev.changed))
                              if ev.event == "step" and ev.step % job.config.stable_every == 0 else None)
        self.steps_run = int(self.bundle["training"]["step"])
        self.changed_trace = [(s, round(c, 5)) for s, c in trace if c == c]

    def predict(self, image: np.ndarray) -> np.ndarray:
        pred, _ = run_predict(self.bundle, image, device=self.args.device)
        return np.asarray(pred)

    def probabilities(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class values, probabilities with the classes first)."""
        _, probs = run_predict(self.bundle, image, device=self.args.device, probabilities=True)
        return np.asarray(self.bundle["classes"]["values"]), np.asarray(probs)


class ForestArm:
    """Random forest (50 trees) on per-plane multiscale features, fit at the painted pixels only."""

    def __init__(self, data: Dataset, seed: int) -> None:
        from functools import partial

        from skimage.feature import multiscale_basic_features

        self.feats = partial(multiscale_basic_features, intensity=True, edges=True, texture=True,
                             sigma_min=1, sigma_max=16)
        self.data, self.seed = data, seed
        self._cache: dict[int, np.ndarray] = {}
        self.clf = None
        self.steps_run = 0
        self.changed_trace: list[tuple[int, float]] = []

    def _plane_features(self, image: np.ndarray) -> np.ndarray:
        return np.stack([self.feats(p.astype(np.float32) / 255.0) for p in image])

    def fit(self, labels: np.ndarray, round_: int) -> None:
        from sklearn.ensemble import RandomForestClassifier

        xs, ys = [], []
        for z in np.flatnonzero(labels.reshape(len(labels), -1).any(1)):
            if z not in self._cache:
                self._cache[z] = self.feats(self.data.image[z].astype(np.float32) / 255.0)
            where = labels[z] > 0
            xs.append(self._cache[z][where])
            ys.append(labels[z][where])
        self.clf = RandomForestClassifier(n_estimators=50, n_jobs=torch.get_num_threads(), random_state=self.seed)
        self.clf.fit(np.concatenate(xs), np.concatenate(ys))

    def predict(self, image: np.ndarray) -> np.ndarray:
        f = self._plane_features(image)
        return self.clf.predict(f.reshape(-1, f.shape[-1])).reshape(image.shape).astype(np.uint8)

    def probabilities(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class values, probabilities with the classes first)."""
        f = self._plane_features(image)
        p = self.clf.predict_proba(f.reshape(-1, f.shape[-1]))
        return np.asarray(self.clf.classes_), np.moveaxis(p.reshape(*image.shape, -1), -1, 0)


class EnsembleArm:
    """The network and the forest fit on the same strokes; the prediction averages their probabilities."""

    def __init__(self, net: NetworkArm, forest: ForestArm, weight: float = 0.5) -> None:
        self.net, self.forest, self.weight = net, forest, weight

    @property
    def steps_run(self) -> int:
        return self.net.steps_run

    @property
    def changed_trace(self) -> list[tuple[int, float]]:
        return self.net.changed_trace

    def fit(self, labels: np.ndarray, round_: int) -> None:
        self.net.fit(labels, round_)
        self.forest.fit(labels, round_)

    def _both(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values, pn = self.net.probabilities(image)
        fvalues, pf = self.forest.probabilities(image)
        assert list(values) == list(fvalues), (values, fvalues)
        return values, pn, pf

    def predict(self, image: np.ndarray) -> np.ndarray:
        values, pn, pf = self._both(image)
        return values[np.argmax(self.weight * pn + (1 - self.weight) * pf, axis=0)].astype(np.uint8)

    def score_parts(self, image: np.ndarray, truth: np.ndarray, target: int) -> dict[str, float]:
        """Dice of the network alone, the forest alone and the average, from one pass of each."""
        values, pn, pf = self._both(image)
        return {name: dice(values[np.argmax(p, axis=0)], truth, target)
                for name, p in (("net", pn), ("forest", pf), ("mean", 0.5 * pn + 0.5 * pf),
                                ("net_0.7", 0.7 * pn + 0.3 * pf))}


# ----------------------------------------------------------------------------- the loop

def run_loop(data: Dataset, spec: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Rounds 0..``args.rounds`` of one arm and seed; the record of every round."""
    arm_name, recipe, params = parse_arm(spec)
    rng = np.random.default_rng(seed + 7)
    extra: dict[str, Any] = {}
    torch.manual_seed(seed)
    if arm_name == "rf":
        arm: Any = ForestArm(data, seed)
    elif arm_name == "ens":  # random-init network + forest on the same strokes, probabilities averaged
        arm = EnsembleArm(NetworkArm(data, recipe, params, None, seed, args), ForestArm(data, seed))
    else:
        init, unlabeled = None, None
        if arm_name == "semi":
            unlabeled = data.pretrain_images[1:] or None
        elif arm_name != "random":
            init, extra["pretrain_s"] = pretrained(data, arm_name, 0, args.pretrain_steps, args)
            extra["pretrain_steps"] = args.pretrain_steps
        arm = NetworkArm(data, recipe, params, init, seed, args, unlabeled)
    labels = first_strokes(data, args.first, seed)
    painted_mask = labels > 0
    rounds: list[dict[str, Any]] = []
    painted_pred: list[np.ndarray] = []
    for r in range(args.rounds + 1):
        if r > 0:
            budget = int(args.per_round * data.truth[0].size)
            for z, pz in zip(data.paint_planes, painted_pred):
                labels[z] = correction_strokes(data.truth[z], pz, labels[z], painted_mask[z], budget, data.radius,
                                               rng, accept=args.correct == "accept")
        t0 = time.perf_counter()
        arm.fit(labels, r)
        # what the user looks at next: the painted planes (a 3D network sees the whole stack)
        painted_pred = list(arm.predict(data.image[data.paint_planes]) if data.ndim == 2
                            else arm.predict(data.image)[data.paint_planes])
        round_s = time.perf_counter() - t0
        scores, parts = {}, {}
        for name, (img, truth) in data.evals.items():
            if isinstance(arm, EnsembleArm):
                parts[name] = arm.score_parts(img, truth, data.target)
                scores[name] = parts[name]["mean"]
            else:
                scores[name] = dice(arm.predict(img), truth, data.target)
        painted = int(painted_mask[data.paint_planes].sum())
        rec = {"round": r, "painted": painted,
               "painted_pct": 100.0 * painted / (len(data.paint_planes) * data.truth[0].size),
               "round_s": round_s, "steps": arm.steps_run, "dice": scores, "changed": arm.changed_trace,
               "painted_dice": float(np.mean([dice(p, data.truth[z], data.target)
                                              for z, p in zip(data.paint_planes, painted_pred)]))}
        if parts:
            rec["parts"] = parts
        rounds.append(rec)
        print(f"[{data.name} {spec} seed {seed}] round {r}: painted {rec['painted_pct']:.2f} %, "
              + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
              + f", {round_s:.0f} s, {arm.steps_run} steps"
              + "".join(f"; {k}: " + ", ".join(f"{n} {v:.3f}" for n, v in d.items()) for k, d in parts.items()),
              flush=True)
    return {"dataset": data.name, "arm": spec, "seed": seed, "rounds": rounds, **extra,
            "settings": settings(args, data)}


# ----------------------------------------------------------------------------- reporting

#: the revision of core's recipes a record was made with (2: plateau schedule, stop on settled regions;
#: 3: correction rounds distilled from the previous model; a 3D network follows the voxel size;
#: 4: the dense recipe, used after "accept", draws its patches anywhere on the annotated planes;
#: 5: ... and weighs the classes alike, adding half of the labels' log class prior back at prediction;
#: 6: a correction round on full masks, as after "accept", uses the ``refine`` recipe (rev 3's dense one);
#: 7: the strokes recipe's first run has smoothness 1 on faint images (neighbour contrast < 0.05: VesselNN), 3 on
#: others (ISBI, unchanged from rev 6); correction rounds 3;
#: 8: ... a 2D network's only: a 3D one keeps 3, i.e. rev 6 (its records: ``random@strokes:faint_smoothness=3``))
RECIPE_REV = 8


def net_3d(data: Dataset) -> str:
    """The 3D network of a record: patch / batch / width (core's default width; records of before
    2026-12-03 carry none and used 8,64,64 / 4 / 16)."""
    return f"{data.patch}/b{data.batch_size}/w{DEFAULT_BASE[3]}"


def settings(args: argparse.Namespace, data: Dataset | None = None) -> dict[str, Any]:
    """The settings that tell one record of an arm and seed from another."""
    keys = ("first", "per_round", "steps", "retrain_steps", "rounds", "pretrain_steps", "correct")
    extra = {"net": net_3d(data)} if data is not None and data.ndim == 3 else {}
    return {**{k: getattr(args, k) for k in keys}, "recipe_rev": RECIPE_REV, **extra}


def _key(rec: dict) -> str:
    rec["settings"].setdefault("correct", "strokes")  # records from before --correct existed
    rec["settings"].setdefault("recipe_rev", 1)  # records from before the revision was recorded
    if rec["dataset"] == "vessel3d":
        rec["settings"].setdefault("net", "8,64,64/b4/w16")  # records from before the 3D defaults changed
    return json.dumps([rec["dataset"], rec["arm"], rec["seed"], rec["settings"]], sort_keys=True)


def summarize(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per dataset / arm / eval set / round: mean ± std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        _key(rec)
        groups.setdefault((rec["dataset"], rec["arm"], json.dumps(rec["settings"], sort_keys=True)), []).append(rec)
    headers = ["dataset", "arm", "recipe rev", "corrections", "eval", "seeds"] + [f"round {r}" for r in range(4)] + [
        "painted % (last)", "round s (median)", "largest drop (pts)"]
    rows = []
    for (ds, arm, _), recs in sorted(groups.items()):
        n_rounds = min(len(r["rounds"]) for r in recs)
        for ev in recs[0]["rounds"][0]["dice"]:
            cells = []
            for r in range(4):
                if r < n_rounds:
                    v = np.array([rec["rounds"][r]["dice"][ev] for rec in recs])
                    cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
                else:
                    cells.append("")
            drops = [rec["rounds"][r - 1]["dice"][ev] - rec["rounds"][r]["dice"][ev]
                     for rec in recs for r in range(1, n_rounds)]
            painted = np.mean([rec["rounds"][n_rounds - 1]["painted_pct"] for rec in recs])
            secs = np.median([rd["round_s"] for rec in recs for rd in rec["rounds"]])
            st = recs[0]["settings"]
            rev = str(st["recipe_rev"]) + (f" ({st['net']})" if "net" in st else "")  # 3D: the network too
            rows.append([ds, arm, rev, st["correct"], ev, str(len(recs)), *cells, f"{painted:.2f}",
                         f"{secs:.0f}", f"{100 * max(0.0, max(drops, default=0.0)):.1f}"])
    return headers, rows


def plot(records: list[dict], dataset: str) -> None:
    """Dice against painted pixels, one line per arm (mean over seeds), for each eval set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in records if r["dataset"] == dataset]
    for r in recs:
        _key(r)
    if not recs:
        return
    evals = list(recs[0]["rounds"][0]["dice"])
    fig, axes = plt.subplots(1, len(evals), figsize=(5.5 * len(evals), 4), squeeze=False)
    arms = sorted({(r["arm"], r["settings"]["correct"], r["settings"]["recipe_rev"], r["settings"].get("net", ""))
                   for r in recs})
    for ax, ev in zip(axes[0], evals):
        for arm, mode, rev, net in arms:
            rs = [r for r in recs if r["arm"] == arm and r["settings"]["correct"] == mode
                  and r["settings"]["recipe_rev"] == rev and r["settings"].get("net", "") == net]
            n = min(len(r["rounds"]) for r in rs)
            x = [np.mean([r["rounds"][i]["painted_pct"] for r in rs]) for i in range(n)]
            y = [np.mean([r["rounds"][i]["dice"][ev] for r in rs]) for i in range(n)]
            what = f"rev {rev}" + (f", {net}" if net and arm != "rf" else "")
            ax.plot(x, y, "o-", label=f"{arm} ({what}), corrections: {mode} ({len(rs)} seeds)")
        ax.set_xlabel("painted pixels (% of the painted planes)")
        ax.set_ylabel("Dice")
        ax.set_title(f"{dataset}: {ev}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{NAME}_{dataset}.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="isbi", choices=["isbi", "vessel2d", "vessel3d"])
    p.add_argument("--arms", default="rf,random", help="comma-separated arms, e.g. rf,random,random@dense,mim,semi")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (a seed changes the strokes and the init)")
    p.add_argument("--rounds", type=int, default=3, help="correction rounds after round 0")
    p.add_argument("--first", type=float, default=0.01, help="round 0: painted share of each painted plane")
    p.add_argument("--per-round", type=float, default=0.005, help="each correction: painted share of a plane")
    p.add_argument("--steps", type=int, default=400, help="round-0 step limit (a recipe may stop earlier)")
    p.add_argument("--retrain-steps", type=int, default=150, help="step limit of each correction round")
    p.add_argument("--pretrain-steps", type=int, default=1000)
    p.add_argument("--correct", default="strokes", choices=["strokes", "accept"],
                   help="strokes: paint over missed regions; accept: accept the prediction of the plane, then paint over its errors")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--force", action="store_true", help="re-run records that exist")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    stored = read_json(NAME) or {"records": [], "machine": []}
    done = {_key(r): r for r in stored["records"]}
    for spec in split_arms(args.arms):
        for seed in (int(s) for s in args.seeds.split(",")):
            probe = {"dataset": data.name, "arm": spec, "seed": seed,
                     "settings": settings(args, data)}
            if _key(probe) in done and not args.force:
                print(f"skip {spec} seed {seed} (recorded)")
                continue
            rec = run_loop(data, spec, seed, args)
            stored = read_json(NAME) or {"records": [], "machine": []}  # other processes may have added records
            stored["records"] = [r for r in stored["records"] if _key(r) != _key(rec)] + [rec]
            stored["machine"] = (stored.get("machine") or [])[-20:] + [machine_info()]
            write_json(NAME, stored)
    headers, rows = summarize(stored["records"])
    print(text_table(headers, rows))
    write_text(f"{NAME}.md", "# Annotation loop (simulated annotator)\n\n" + markdown_table(headers, rows))
    if have_matplotlib():
        plot(stored["records"], data.name)


if __name__ == "__main__":
    main()
