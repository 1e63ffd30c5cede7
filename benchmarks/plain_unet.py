"""Our default fine-tune against a plain U-Net given the same labels: do the defaults fit what users bring?

The plain U-Net is what a user would write in an afternoon, kept apart from ``core`` on purpose: a 2D U-Net
(two 3x3 conv + BatchNorm + ReLU per level, max pooling, transposed-conv upsampling, width ``--plain-base``,
3 poolings), per-stack z-score normalisation, random flips and 90° rotations, Adam at 1e-3, plain
cross-entropy over the labeled pixels, ``--steps`` steps of ``--batch`` patches of 128² drawn from the labeled
planes, fp32. Ours is ``core.workflows.finetune_job`` with the recipe ``auto`` (what the widget and
``finetune`` run), the same labels and the same step limit.

Label regimes (``--labels``): ``dense:Z1;Z2`` the whole planes Z1, Z2 of the training stack (the rest blank;
ours then self-trains, core/selftrain.py), ``strokes`` the annotation loop's round-0 strokes (1 % of the
painted planes). Datasets as in annotation_loop.py: ``isbi`` (membrane Dice on slices 20..29) and
``vessel2d`` (vessel Dice on stack 01's other planes and on stack 04).

    python benchmarks/plain_unet.py --dataset isbi --labels "dense:0;10" --seeds 0,1,2 --threads 1

Results accumulate in results/plain_unet.json (one record per dataset / labels / arm / seed) and plain_unet.md.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import machine_info, markdown_table, read_json, text_table, write_json, write_text
from annotation_loop import Dataset, first_strokes, load_dataset
from torch import nn

from napari_regcon.core.metrics import dice
from napari_regcon.core.workflows import finetune_job, run_predict

NAME = "plain_unet"
IGNORE = -100


class PlainUNet(nn.Module):
    """The textbook 2D U-Net: BatchNorm, ReLU, max pooling, transposed convolutions."""

    def __init__(self, classes: int, base: int = 32, depth: int = 3) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                 nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))
        widths = [base * 2 ** k for k in range(depth + 1)]
        self.down = nn.ModuleList([block(1 if k == 0 else widths[k - 1], widths[k]) for k in range(depth + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2) for k in range(depth)])
        self.merge = nn.ModuleList([block(2 * widths[k], widths[k]) for k in range(depth)])
        self.head = nn.Conv2d(base, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, blk in enumerate(self.down):
            x = blk(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for k in reversed(range(len(self.up))):
            x = self.merge[k](torch.cat([self.up[k](x), skips.pop()], 1))
        return self.head(x)


def plain_fit_predict(data: Dataset, labels: np.ndarray, seed: int, steps: int, batch: int, base: int
                      ) -> tuple[dict[str, np.ndarray], float]:
    """Train the plain U-Net on ``labels`` (0 = not labeled, classes 1..K) and predict every eval set."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    img = data.image.astype(np.float32)
    mean, std = float(img.mean()), float(img.std()) or 1.0
    img = (img - mean) / std
    target = labels.astype(np.int64) - 1
    target[labels == 0] = IGNORE
    planes = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    n_classes = int(data.truth.max())
    net = PlainUNet(n_classes, base)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    p = 128
    t0 = time.perf_counter()
    net.train()
    for _ in range(steps):
        xs, ys = [], []
        while len(xs) < batch:
            z = int(rng.choice(planes))
            y0, x0 = (int(rng.integers(0, s - p + 1)) for s in img.shape[1:])
            t = target[z, y0:y0 + p, x0:x0 + p]
            if (t == IGNORE).all():  # a patch with nothing labeled teaches nothing
                continue
            im = img[z, y0:y0 + p, x0:x0 + p]
            k = int(rng.integers(4))
            im, t = np.rot90(im, k), np.rot90(t, k)
            if rng.random() < 0.5:
                im, t = im[:, ::-1], t[:, ::-1]
            xs.append(np.ascontiguousarray(im))
            ys.append(np.ascontiguousarray(t))
        x = torch.from_numpy(np.stack(xs))[:, None]
        loss = F.cross_entropy(net(x), torch.from_numpy(np.stack(ys)), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    net.eval()
    out = {}
    with torch.no_grad():
        for name, (im, _) in data.evals.items():
            x = (im.astype(np.float32) - mean) / std
            out[name] = np.stack([net(torch.from_numpy(pl)[None, None]).argmax(1)[0].numpy() + 1 for pl in x])
    return out, seconds


def make_labels(data: Dataset, spec: str, seed: int) -> np.ndarray:
    """The labels of a regime: ``dense:Z1;Z2`` whole planes, or ``strokes`` (round 0 of the annotation loop)."""
    if spec == "strokes":
        return first_strokes(data, 0.01, seed)
    if spec.startswith("dense:"):
        planes = [int(z) for z in spec.split(":", 1)[1].split(";")]
        labels = np.zeros_like(data.truth)
        labels[planes] = data.truth[planes]
        return labels
    raise SystemExit(f"unknown labels {spec!r}: dense:Z1;Z2 or strokes")


def run(data: Dataset, spec: str, arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    labels = make_labels(data, spec, seed)
    if arm == "plain":
        preds, seconds = plain_fit_predict(data, labels, seed, args.steps, args.batch, args.plain_base)
        extra: dict[str, Any] = {"base": args.plain_base}
    else:
        t0 = time.perf_counter()
        job = finetune_job(data.image, labels, ndim=2, patch_size=data.patch, steps=args.steps, batch_size=args.batch,
                           seed=seed, device="cpu", checkpoint_every=0, recipe=args.recipe)
        bundle = job.run()
        seconds = time.perf_counter() - t0
        preds = {name: np.asarray(run_predict(bundle, im, device="cpu")[0]) for name, (im, _) in data.evals.items()}
        extra = {"recipe": bundle["data"].get("recipe", {}).get("name"), "self_trained": bundle["data"].get("self_trained"),
                 "steps_run": int(bundle["training"]["step"])}
    scores = {name: round(dice(preds[name], truth, data.target), 4) for name, (_, truth) in data.evals.items()}
    return {"dataset": data.name, "labels": spec, "arm": arm, "seed": seed, "steps": args.steps, "dice": scores,
            "seconds": round(seconds, 1), **extra}


def summarize(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["labels"], r["arm"], r["steps"]), []).append(r)
    rows = []
    for (ds, spec, arm, steps), recs in sorted(groups.items()):
        cells = []
        for name in recs[0]["dice"]:
            v = np.array([r["dice"][name] for r in recs])
            cells.append(f"{name}: {v.mean():.3f} ± {v.std():.3f}")
        rows.append([ds, spec, arm, str(steps), str(len(recs)), "; ".join(cells),
                     f"{np.median([r['seconds'] for r in recs]):.0f}"])
    return ["dataset", "labels", "arm", "steps", "seeds", "Dice (mean ± std)", "median s"], rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="isbi", choices=["isbi", "vessel2d"])
    ap.add_argument("--labels", default="dense:0;10", help="dense:Z1;Z2 (whole planes) or strokes")
    ap.add_argument("--arms", default="plain,ours")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--plain-base", type=int, default=32, help="width of the plain U-Net's first level")
    ap.add_argument("--recipe", default="auto", help="ours: the fine-tuning recipe")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    records = (read_json(NAME) or {}).get("records", [])
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in args.arms.split(","):
            rec = run(data, args.labels, arm, seed, args)
            rec["machine"] = machine_info()
            print(rec["arm"], rec["seed"], rec["dice"], f"{rec['seconds']} s", flush=True)
            records = [r for r in records if (r["dataset"], r["labels"], r["arm"], r["seed"], r["steps"]) !=
                       (rec["dataset"], rec["labels"], rec["arm"], rec["seed"], rec["steps"])] + [rec]
            write_json(NAME, {"records": records})
    headers, rows = summarize(records)
    write_text(f"{NAME}.md", markdown_table(headers, rows) + "\n")
    print(text_table(headers, rows))


if __name__ == "__main__":
    main()
