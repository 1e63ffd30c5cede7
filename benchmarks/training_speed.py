"""Training and prediction speed per precision (issue 14), every contender interleaved in one process.

Sections (each optional, see the flags):

- **training**: patches/s of one step of the real training loop (``iter_train`` through the Jobs the
  CLI builds) for supervised fine-tuning (the product's defaults: 2D U-Net base 16, depth 3, batch
  8 of 128², AdamW, the ``strokes`` recipe that painted labels get: ~1 % of ISBI slice 0 as brush
  strokes) and each pretext (``mim``, ``regcon``, ``lrc``, ``glrp`` on the unlabeled ISBI stacks),
  for each precision the device has (CPU: fp32, and bf16 when the CPU has bf16 units; CUDA: fp32,
  fp16, bf16). Optional variants of each arm: ``channels_last`` (the network in NHWC layout) and
  ``prefetch`` (the next batch drawn in a background thread, ``TrainConfig.prefetch``). The arms
  of a task run round-robin, a block of steps each per round (the first step of a block is not
  timed: a prefetching arm drew it while another arm ran); ratios are per round, then the median.
- **FLOP rate**: the step's forward+backward FLOPs counted with ``torch.utils.flop_counter``
  divided by its median time, against the machine's own conv rate measured in the same rounds: the
  network's own Conv2d layers (same shapes, found with hooks) run forward+backward on their own in
  the native dtype of the precision (fp32 / bf16 tensors, no autocast).
- **prediction**: MP/s of the tiled predictor (``run_predict``) on ISBI planes for each precision
  and inference batch size, plane by plane interleaved with MONAI's fp32 ``sliding_window_inference``
  of the same network (a model fine-tuned for ``--predict-train-steps`` steps), and the share of labels
  differing from our fp32 prediction.
- **kernels**: the two pieces rewritten for speed (the strokes recipe's smoothness loss; pooling in
  prediction), old and new form interleaved.
- **compile** (``--compile``): ``torch.compile`` of the supervised bare step against eager, compile
  time and steps to pay it back.
- **accuracy** (``--accuracy``): label-efficiency Dice (membrane, ISBI slices 20..29, random init,
  1 labeled slice and scribbles) with training and prediction in fp32 against bf16.

``--no-bf16`` makes the run behave as on a CPU without bf16 units (``auto`` then resolves to fp32):
the arms become ``fp32`` and ``auto``, which shows the fallback path and that it costs nothing.

Examples::

    python benchmarks/training_speed.py --threads 1
    python benchmarks/training_speed.py --threads 1 --no-bf16 --sections training
    python benchmarks/training_speed.py --threads 1 --sections accuracy --accuracy-seeds 0,1,2
    python benchmarks/training_speed.py --device cuda --threads 4
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
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
from scribbles import scribble
from torch.utils.flop_counter import FlopCounterMode

from napari_regcon.core import precision as precision_mod
from napari_regcon.core.device import get_device
from napari_regcon.core.precision import resolve_precision
from napari_regcon.core.training import Progress
from napari_regcon.core.workflows import Job, finetune_job, pretrain_job, run_predict

NAME = "training_speed"
TASKS = ("supervised", "mim", "regcon", "lrc", "glrp")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def loadavg() -> float:
    """The 1-minute load average (nan where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def precisions_for(device: torch.device, no_bf16: bool) -> list[str]:
    """The precisions to compare on ``device``: fp32 first, then what its arithmetic units offer."""
    if no_bf16:
        return ["fp32", "auto"]
    if device.type == "cuda":
        return ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    return ["fp32"] + (["bf16"] if precision_mod.cpu_has_bf16() else [])


def native_dtype(name: str, device: torch.device) -> torch.dtype:
    """The arithmetic dtype an arm named ``name`` runs in (``auto`` resolved)."""
    return resolve_precision(name, device) or torch.float32


# ----------------------------------------------------------------------------- training arms

def isbi_inputs(data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Images and painted labels: strokes on ~1 % of slice 0 of the 20 training slices (class 1 cell, 2 membrane)."""
    truth = data["train_mem"][:20].astype(np.uint8) + 1
    labels = np.zeros_like(truth)
    labels[0] = scribble(truth[0], fraction=0.01, seed=0)
    return {"image": data["train_raw"][:20], "labels": labels, "unlabeled": [data["train_raw"][:20], data["test_raw"]]}


def build_job(task: str, inputs: dict[str, Any], precision: str, args: argparse.Namespace) -> Job:
    """The job the CLI would build for ``task`` (defaults of core.options) at ``precision``."""
    common = {"patch_size": args.patch, "batch_size": args.batch_size, "steps": 100_000, "seed": 0,
              "device": args.device, "checkpoint_every": 0, "precision": precision}
    if task == "supervised":
        return finetune_job(inputs["image"], inputs["labels"], **common)
    return pretrain_job(inputs["unlabeled"], task, **common)


@dataclass
class Arm:
    """One contender: a task at a precision (and variant), its training loop kept running between blocks."""

    task: str
    precision: str
    variant: str
    job: Job
    gen: Generator[Progress, None, Any] = field(init=False)
    times: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.task} {self.precision}" + (f" {self.variant}" if self.variant else "")

    def start(self) -> None:
        if self.variant == "channels_last":
            self.job.model.to(memory_format=torch.channels_last)
        if self.variant == "prefetch":
            self.job.config.prefetch = True
        self.gen = self.job.events()
        assert next(self.gen).event == "start"
        self.block(2)  # warm-up: first-call allocations and oneDNN kernel choice out of the timing

    def block(self, n: int) -> list[float]:
        """Run ``n`` steps; the seconds of each."""
        out = []
        while len(out) < n:
            t0 = time.perf_counter()
            ev = next(self.gen)
            if ev.event == "step":
                out.append(time.perf_counter() - t0)
        return out

    def stop(self) -> None:
        self.gen.close()


def step_flops(job: Job) -> int:
    """Forward + backward FLOPs of one step's loss (``torch.utils.flop_counter``; precision-independent)."""
    model, task = copy.deepcopy(job.model).float(), copy.deepcopy(job.task)
    model.to(memory_format=torch.contiguous_format)
    task.bind(model)
    options = task.sample_options
    sampler = copy.deepcopy(job.sampler)
    batch = task.prepare(sampler.sample(job.config.batch_size, **options), np.random.default_rng(0))
    batch = {k: v.to(get_device(job.config.device)) for k, v in batch.items()}
    model.to(get_device(job.config.device)).train()
    task.to(get_device(job.config.device)).train()
    with FlopCounterMode(display=False) as counter:
        loss, _ = task.loss(model, batch)
        loss.backward()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- conv rate

class ConvRate:
    """The network's Conv2d layers run alone, forward + backward, in one native dtype: the machine's conv rate."""

    def __init__(self, job: Job, dtype: torch.dtype, device: torch.device) -> None:
        model = copy.deepcopy(job.model).float().to(device).train()
        model.to(memory_format=torch.contiguous_format)
        shapes: list[tuple[torch.nn.Conv2d, tuple[int, ...], bool]] = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: shapes.append((mod, tuple(inp[0].shape), inp[0].requires_grad)))
                 for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        x = torch.zeros(job.config.batch_size, model.config.in_channels, *job.info["patch"], device=device)
        model(x)
        for h in hooks:
            h.remove()
        self.cases = []
        for mod, shape, needs_grad in shapes:
            conv = copy.deepcopy(mod).to(dtype)
            inp = torch.randn(shape, device=device, dtype=dtype).requires_grad_(needs_grad)
            grad = torch.randn_like(conv(inp))
            self.cases.append((conv, inp, grad))
        with FlopCounterMode(display=False) as counter:
            self.run_once()
        self.flops = int(counter.get_total_flops())
        self.run_once()  # warm-up
        self.times: list[float] = []

    def run_once(self) -> None:
        for conv, inp, grad in self.cases:
            conv(inp).backward(grad)

    def measure(self, repeats: int) -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            self.run_once()
        seconds = (time.perf_counter() - t0) / repeats
        self.times.append(seconds)
        return seconds


def bench_training(inputs: dict, args: argparse.Namespace, precisions: list[str], device: torch.device
                   ) -> dict[str, Any]:
    tasks = [t for t in args.tasks.split(",") if t]
    variants = [""] + [v for v in args.variants.split(",") if v]
    load0 = loadavg()
    arms: dict[str, list[Arm]] = {}
    flops: dict[str, int] = {}
    for task in tasks:
        arms[task] = [Arm(task, p, v, build_job(task, inputs, p, args)) for p in precisions for v in variants]
        for arm in arms[task]:
            arm.start()
        flops[task] = step_flops(arms[task][0].job)
    ref_job = arms[tasks[0]][0].job
    convs = {p: ConvRate(ref_job, native_dtype(p, device), device) for p in precisions}
    ratios: dict[str, list[float]] = {a.name: [] for t in tasks for a in arms[t]}
    for r in range(args.rounds):
        for task in tasks:
            order = arms[task] if r % 2 == 0 else arms[task][::-1]
            medians = {}
            for arm in order:
                t = arm.block(args.block)[1:] if args.block > 1 else arm.block(1)
                arm.times += t
                medians[arm.name] = median(t)
            ref = medians[arms[task][0].name]
            for arm in arms[task]:
                ratios[arm.name].append(ref / medians[arm.name])
            print(f"  round {r + 1}/{args.rounds} {task}: " +
                  ", ".join(f"{a.name} {medians[a.name] * 1e3:.0f} ms" for a in arms[task]), flush=True)
        for p in precisions[::1 if r % 2 == 0 else -1]:
            convs[p].measure(args.conv_repeats)
    rows = []
    for task in tasks:
        for arm in arms[task]:
            arm.stop()
            step_s = median(arm.times)
            conv = convs[arm.precision]
            conv_rate = conv.flops / median(conv.times)
            rows.append({"task": task, "precision": arm.precision, "variant": arm.variant,
                         "resolved": str(native_dtype(arm.precision, device)).replace("torch.", ""),
                         "step_ms": 1e3 * step_s, "step_ms_range": [1e3 * v for v in spread(arm.times)],
                         "patches_s": args.batch_size / step_s, "n_steps": len(arm.times),
                         "speedup_vs_fp32": median(ratios[arm.name]), "speedup_range": list(spread(ratios[arm.name])),
                         "gflop_step": flops[task] / 1e9, "gflops_s": flops[task] / step_s / 1e9,
                         "conv_gflops_s": conv_rate / 1e9, "of_conv_rate": flops[task] / step_s / conv_rate})
    conv_rows = [{"precision": p, "gflop": c.flops / 1e9, "ms": 1e3 * median(c.times), "gflops_s": c.flops / median(c.times) / 1e9,
                  "layers": len(c.cases)} for p, c in convs.items()]
    return {"rows": rows, "conv": conv_rows, "rounds": args.rounds, "block": args.block,
            "loadavg": [load0, loadavg()], "patch": args.patch, "batch": args.batch_size}


# ----------------------------------------------------------------------------- prediction

def bench_prediction(inputs: dict, data: dict, args: argparse.Namespace, precisions: list[str]) -> dict[str, Any]:
    """Our tiled predictor per precision and batch size, interleaved plane by plane with MONAI fp32."""
    from inference_speed import monai

    from napari_regcon.core.inference import gaussian_weights
    from napari_regcon.core.normalize import Normalization
    from napari_regcon.core.workflows import model_from_bundle

    load0 = loadavg()
    job = finetune_job(inputs["image"], inputs["labels"], steps=args.predict_train_steps, seed=0, device=args.device,
                       checkpoint_every=0, patch_size=args.patch, batch_size=args.batch_size)
    bundle = job.run()
    image = data["train_raw"][20:20 + args.predict_planes]
    values = bundle["classes"]["values"]
    tile = (256, 256)
    contenders: list[tuple[str, str, int]] = [(p, "ours", 4) for p in precisions]
    best = precisions[-1]
    contenders += [(best, "ours", b) for b in (int(v) for v in args.predict_batches.split(",") if v) if b != 4]
    contenders.append(("fp32", "monai", 4))
    outs = {c: (np.zeros(image.shape, np.uint8), np.zeros((len(values), *image.shape), np.float32)) for c in contenders}
    model = model_from_bundle(bundle)
    norm = Normalization.from_dict(bundle["normalization"])
    weight = torch.from_numpy(gaussian_weights(tile))
    secs: dict[tuple, list[float]] = {c: [] for c in contenders}

    def one(c: tuple[str, str, int], z: int) -> float:
        prec, who, batch = c
        t0 = time.perf_counter()
        if who == "monai":
            monai(model, norm, image, 2, tile, 0.25, batch, weight, outs[c], range(z, z + 1))
        else:
            run_predict(bundle, image, probabilities=True, tile="256", overlap=0.25, batch_size=batch,
                        device=args.device, precision=prec, out_labels=outs[c][0], out_probs=outs[c][1], zrange=(z, z + 1))
        return time.perf_counter() - t0

    for c in contenders:
        one(c, 0)  # warm-up
    for z in range(image.shape[0]):
        for c in (contenders if z % 2 == 0 else contenders[::-1]):
            secs[c].append(one(c, z))
    mp = image[0].size / 1e6
    ref_ours, ref_monai = (precisions[0], "ours", 4), ("fp32", "monai", 4)
    rows = []
    for c in contenders:
        per_plane = [m / s for m, s in zip(secs[ref_monai], secs[c])]
        rows.append({"precision": c[0], "predictor": c[1], "batch": c[2], "mpix_s": mp / median(secs[c]),
                     "vs_monai_fp32": median(per_plane), "vs_monai_range": list(spread(per_plane)),
                     "labels_differing_vs_fp32": float((outs[c][0] != outs[ref_ours][0]).mean())})
    return {"rows": rows, "planes": int(image.shape[0]), "tile": list(tile), "overlap": 0.25,
            "train_steps": args.predict_train_steps, "loadavg": [load0, loadavg()]}


# ----------------------------------------------------------------------------- torch.compile

def bare_step(job: Job, dtype: torch.dtype | None, device: torch.device, compiled: bool) -> Callable[[dict], None]:
    """The supervised step alone (loss, backward, AdamW) on a copy of the job's network, optionally compiled."""
    model = copy.deepcopy(job.model).to(device).train()
    task = copy.deepcopy(job.task).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    net = torch.compile(model) if compiled else model

    def step(batch: dict) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = task.loss(net, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def bench_compile(inputs: dict, args: argparse.Namespace, precisions: list[str], device: torch.device
                  ) -> list[dict[str, Any]]:
    """The supervised bare step (loss, backward, AdamW), eager against ``torch.compile``d, per precision.

    The compiler's cache goes to a new folder, so the first step pays the compile time a user's
    first run pays (a warm cache from an earlier run hides most of it).
    """
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="regcon-inductor-")
    out = []
    for prec in precisions:
        load0 = loadavg()
        job = build_job("supervised", inputs, prec, args)
        dtype = resolve_precision(prec, device)
        options = job.task.sample_options
        batches = [job.task.prepare(job.sampler.sample(args.batch_size, **options), np.random.default_rng(i))
                   for i in range(4)]
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

        eager, comp = bare_step(job, dtype, device, False), bare_step(job, dtype, device, True)
        t0 = time.perf_counter()
        comp(batches[0])
        first = time.perf_counter() - t0
        eager(batches[0])
        te, tc = [], []
        for i in range(args.compile_steps):
            for who in (("e", "c") if i % 2 == 0 else ("c", "e")):
                t0 = time.perf_counter()
                (eager if who == "e" else comp)(batches[i % len(batches)])
                (te if who == "e" else tc).append(time.perf_counter() - t0)
        gain = median(te) - median(tc)
        out.append({"precision": prec, "compile_first_step_s": first, "eager_ms": 1e3 * median(te),
                    "compiled_ms": 1e3 * median(tc), "speedup": median(te) / median(tc),
                    "payback_steps": (first - median(tc)) / gain if gain > 0 else None, "loadavg": [load0, loadavg()]})
        print(f"  compile {prec}: first step {first:.1f} s, eager {1e3 * median(te):.0f} ms, "
              f"compiled {1e3 * median(tc):.0f} ms", flush=True)
    return out


# ----------------------------------------------------------------------------- kernels

def smoothness_by_unfold(logits: torch.Tensor, image: torch.Tensor, radius: int = 2, sigma: float = 0.1) -> torch.Tensor:
    """The edge-aware smoothness as it was computed before issue 14: on a 25-fold unfolded window
    (tests/test_strokes_recipe.py checks the product's form against the same definition)."""
    prob, inten = logits.float().softmax(1), image.float().mean(1, keepdim=True)
    k = 2 * radius + 1
    unfold = torch.nn.Unfold(kernel_size=k, padding=radius)
    n, c, h, w = prob.shape
    p_nb, i_nb = unfold(prob).view(n, c, k * k, h, w), unfold(inten).view(n, 1, k * k, h, w)
    inside = unfold(torch.ones_like(inten)).view(n, 1, k * k, h, w)
    weight = torch.exp(-((i_nb - inten.unsqueeze(2)) ** 2) / (2 * sigma ** 2)) * inside
    return (weight * (1 - (p_nb * prob.unsqueeze(2)).sum(1, keepdim=True))).sum() / weight.sum().clamp_min(1.0)


def bench_kernels(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Two pieces issue 14 rewrote, old and new form interleaved: the strokes recipe's smoothness
    loss (forward + backward, 8x2x128² logits) and the U-Net's 2x2 pooling in prediction (3x16x256²)."""
    from napari_regcon.core.models import max_pool
    from napari_regcon.core.supervised import edge_aware_smoothness

    logits = torch.randn(args.batch_size, 2, args.patch, args.patch, device=device, requires_grad=True)
    image = torch.rand(args.batch_size, 1, args.patch, args.patch, device=device)
    feats = torch.randn(3, 16, 256, 256, device=device)

    def smooth(f: Callable) -> Callable[[], None]:
        return lambda: f(logits, image).backward()

    def pool(new: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                max_pool(feats, (2, 2)) if new else torch.nn.functional.max_pool2d(feats, 2)
        return run

    cases = {"smoothness loss fwd+bwd": (smooth(smoothness_by_unfold), smooth(edge_aware_smoothness)),
             "2x2 max pooling, inference": (pool(False), pool(True))}
    out = []
    for name, (old, new) in cases.items():
        old(), new()
        t_old, t_new = [], []
        for i in range(args.kernel_repeats):
            for who in ((0, 1) if i % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                (old if who == 0 else new)()
                (t_old if who == 0 else t_new).append(time.perf_counter() - t0)
        out.append({"kernel": name, "old_ms": 1e3 * median(t_old), "new_ms": 1e3 * median(t_new),
                    "speedup": median(t_old) / median(t_new), "loadavg": loadavg()})
    return out


# ----------------------------------------------------------------------------- accuracy

def bench_accuracy(data: dict, args: argparse.Namespace, precisions: list[str]) -> dict[str, Any]:
    """Membrane Dice on ISBI slices 20..29 after the product's fine-tune at each precision (random init)."""
    from label_efficiency import regime_labels, scores

    load0 = loadavg()
    runs = []
    for regime in args.regimes.split(","):
        for seed in (int(s) for s in args.accuracy_seeds.split(",")):
            labels = regime_labels(data["train_mem"], regime, seed)
            for prec in precisions:
                t0 = time.perf_counter()
                job = finetune_job(data["train_raw"][:20], labels, steps=args.accuracy_steps, seed=seed,
                                   device=args.device, checkpoint_every=0, precision=prec, patch_size=args.patch,
                                   batch_size=args.batch_size)
                bundle = job.run()
                ft_s = time.perf_counter() - t0
                pred, _ = run_predict(bundle, data["train_raw"][20:30], device=args.device, precision=prec)
                res = scores(pred, data["train_mem"][20:30])
                runs.append({"regime": regime, "seed": seed, "precision": prec, "dice": res["dice"],
                             "steps_run": int(bundle["training"]["step"]), "finetune_s": ft_s})
                print(f"  accuracy {regime} seed {seed} {prec}: Dice {res['dice']:.4f} "
                      f"({runs[-1]['steps_run']} steps, {ft_s:.0f} s)", flush=True)
    summary = []
    for regime in args.regimes.split(","):
        by = {p: {r["seed"]: r["dice"] for r in runs if r["regime"] == regime and r["precision"] == p} for p in precisions}
        ref = by[precisions[0]]
        for p in precisions:
            delta = [by[p][s] - ref[s] for s in ref if s in by[p]]
            summary.append({"regime": regime, "precision": p, "n_seeds": len(by[p]),
                            "dice_mean": float(np.mean(list(by[p].values()))), "dice_std": float(np.std(list(by[p].values()))),
                            "delta_vs_fp32": float(np.mean(delta))})
    return {"runs": runs, "summary": summary, "steps": args.accuracy_steps, "loadavg": [load0, loadavg()]}


# ----------------------------------------------------------------------------- report

def tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    out = []
    if "training" in result:
        tr = result["training"]
        head = ["task", "precision", "runs as", "patches/s", "step ms (median)", "x fp32 (median, range)",
                "GFLOP/step", "GFLOP/s", "conv GFLOP/s", "of conv rate"]
        rows = [[r["task"], r["precision"] + (f" {r['variant']}" if r["variant"] else ""), r["resolved"],
                 f"{r['patches_s']:.1f}", f"{r['step_ms']:.0f}",
                 f"{r['speedup_vs_fp32']:.2f} ({r['speedup_range'][0]:.2f}–{r['speedup_range'][1]:.2f})",
                 f"{r['gflop_step']:.1f}", f"{r['gflops_s']:.1f}", f"{r['conv_gflops_s']:.1f}",
                 f"{100 * r['of_conv_rate']:.0f}%"] for r in tr["rows"]]
        out.append((f"Training step, batch {tr['batch']} of {tr['patch']}², {tr['rounds']} rounds x "
                    f"{tr['block']} steps per arm (load {tr['loadavg'][0]:.1f} → {tr['loadavg'][1]:.1f})", head, rows))
        head = ["conv reference", "layers", "GFLOP fwd+bwd", "ms", "GFLOP/s"]
        rows = [[c["precision"], c["layers"], f"{c['gflop']:.2f}", f"{c['ms']:.0f}", f"{c['gflops_s']:.1f}"]
                for c in tr["conv"]]
        out.append(("Machine conv rate: the network's Conv2d layers alone, native dtype", head, rows))
    if "prediction" in result:
        pr = result["prediction"]
        head = ["predictor", "precision", "batch", "MP/s", "x MONAI fp32 (median, range)", "labels ≠ our fp32"]
        rows = [[r["predictor"], r["precision"], r["batch"], f"{r['mpix_s']:.3f}",
                 f"{r['vs_monai_fp32']:.2f} ({r['vs_monai_range'][0]:.2f}–{r['vs_monai_range'][1]:.2f})",
                 f"{100 * r['labels_differing_vs_fp32']:.4f}%"] for r in pr["rows"]]
        out.append((f"Prediction, {pr['planes']} ISBI planes of 512², tile {pr['tile'][0]}², overlap {pr['overlap']}, "
                    f"model fine-tuned {pr['train_steps']} steps (load {pr['loadavg'][0]:.1f} → {pr['loadavg'][1]:.1f})",
                    head, rows))
    if "compile" in result:
        head = ["precision", "compile + first step s", "eager ms", "compiled ms", "speed-up", "payback steps"]
        rows = [[c["precision"], f"{c['compile_first_step_s']:.1f}", f"{c['eager_ms']:.0f}", f"{c['compiled_ms']:.0f}",
                 f"{c['speedup']:.2f}", "never" if c["payback_steps"] is None else f"{c['payback_steps']:.0f}"]
                for c in result["compile"]]
        out.append(("torch.compile of the supervised step", head, rows))
    if "kernels" in result:
        head = ["kernel", "before ms", "now ms", "speed-up"]
        rows = [[k["kernel"], f"{k['old_ms']:.1f}", f"{k['new_ms']:.1f}", f"{k['speedup']:.1f}x"] for k in result["kernels"]]
        out.append(("Rewritten kernels, old and new form interleaved", head, rows))
    if "accuracy" in result:
        ac = result["accuracy"]
        head = ["regime", "precision", "seeds", "membrane Dice", "Δ vs fp32 (paired)"]
        rows = [[s["regime"], s["precision"], s["n_seeds"], f"{s['dice_mean']:.4f} ± {s['dice_std']:.4f}",
                 f"{100 * s['delta_vs_fp32']:+.2f} points"] for s in ac["summary"]]
        out.append((f"Accuracy: random init, {ac['steps']}-step fine-tune, ISBI slices 20..29 "
                    f"(load {ac['loadavg'][0]:.1f} → {ac['loadavg'][1]:.1f})", head, rows))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="training,prediction,kernels",
                   help="comma list: training, prediction, kernels, compile, accuracy")
    p.add_argument("--tasks", default=",".join(TASKS), help="supervised and/or pretext names (%(default)s)")
    p.add_argument("--variants", default="", help="extra training arms: channels_last, prefetch (comma list)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--block", type=int, default=3, help="steps per arm and round (the first is not timed)")
    p.add_argument("--conv-repeats", type=int, default=3)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--predict-planes", type=int, default=4)
    p.add_argument("--predict-batches", default="1,2,8", help="inference batch sizes besides 4, at the fastest precision")
    p.add_argument("--predict-train-steps", type=int, default=100)
    p.add_argument("--compile", action="store_true", help="add the torch.compile section")
    p.add_argument("--compile-steps", type=int, default=8)
    p.add_argument("--kernel-repeats", type=int, default=10)
    p.add_argument("--accuracy", action="store_true", help="add the accuracy section")
    p.add_argument("--regimes", default="1,scribble")
    p.add_argument("--accuracy-seeds", default="0,1,2")
    p.add_argument("--accuracy-steps", type=int, default=400)
    p.add_argument("--no-bf16", action="store_true", help="behave as on a CPU without bf16 units (fallback path)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default=None, help="results file name (default training_speed[_nobf16])")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sections = set(args.sections.split(",")) | ({"compile"} if args.compile else set()) | \
        ({"accuracy"} if args.accuracy else set())
    if args.no_bf16:
        precision_mod.cpu_has_bf16 = lambda: False  # resolve_precision looks it up at each call
    device = get_device(args.device)
    precisions = precisions_for(device, args.no_bf16)
    name = args.name or NAME + ("_nobf16" if args.no_bf16 else "")
    machine = machine_info()
    data = load_isbi()
    inputs = isbi_inputs(data)
    result: dict[str, Any] = {"benchmark": NAME, "machine": machine, "threads": args.threads, "device": str(device),
                              "precisions": precisions, "cpu_has_bf16": precision_mod.cpu_has_bf16()}
    if "training" in sections:
        result["training"] = bench_training(inputs, args, precisions, device)
    if "prediction" in sections:
        result["prediction"] = bench_prediction(inputs, data, args, precisions)
    if "compile" in sections:
        result["compile"] = bench_compile(inputs, args, [q for q in precisions if q != "auto"], device)
    if "kernels" in sections:
        result["kernels"] = bench_kernels(args, device)
    if "accuracy" in sections:
        result["accuracy"] = bench_accuracy(data, args, precisions)
    machine["loadavg_end"] = list(os.getloadavg())
    write_json(name, result)
    md = [f"# Training and prediction speed per precision ({machine['date']}, {machine['cpu']}, {machine['nproc']} cores, "
          f"torch {machine['torch']}, {args.threads} thread(s), {device}, load {machine['loadavg_start'][0]:.1f} at start, "
          f"{machine['loadavg_end'][0]:.1f} at end)\n\n`{machine['command']}`\n"]
    for title, head, rows in tables(result):
        print(f"\n{title}\n" + text_table(head, rows))
        md.append(f"## {title}\n\n" + markdown_table(head, rows) + "\n")
    write_text(f"{name}.md", "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
