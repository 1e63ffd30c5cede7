"""The one training loop: pretraining and fine-tuning both run through :func:`iter_train`.

It is a generator of :class:`Progress` events, so the napari widgets relay it from a
``thread_worker`` and the CLI prints it; it checks a cancel flag before every step, writes
atomic checkpoints periodically and at the end (or on cancel), and resumes from a bundle with
the step count, optimiser, loss history and random state of the interrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .checkpoint import save_bundle
from .device import get_device
from .models import UNet
from .precision import autocast_factory, precision_name, resolve_precision
from .prefetch import Prefetcher
from .pretext.base import Task
from .sampling import PatchSampler


@dataclass
class TrainConfig:
    """Optimisation settings shared by every task."""

    steps: int = 400
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05
    min_lr_ratio: float = 0.01
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None  # deprecated switch: False forces fp32, True the device's mixed precision
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (core.precision)
    checkpoint_every: int = 100
    ema: float = 0.0  # > 0: keep an exponential moving average of the weights and return it
    stop_when_stable: bool = False  # end early once the prediction of a probe batch stops changing
    stable_every: int = 20
    stable_tol: float = 0.005  # fraction of probe pixels whose class changed since the last check
    stable_patience: int = 2
    min_steps: int = 60
    schedule: str = "cosine"  # cosine: warm-up + cosine over the step limit; plateau: warm-up, constant, cool-down
    cooldown: float = 0.15  # plateau: share of the step limit spent decaying, at the end or once stable
    prefetch: bool = False  # draw the next batch in a background thread while the step runs (core.prefetch)
    encoder_lr_scale: float = 1.0  # the network's encoder learns at this share of the rate (a pretrained start)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Progress:
    """One event of a training run.

    ``event`` is ``start``, ``step``, ``checkpoint``, ``done`` or ``cancelled``.
    """

    event: str
    step: int
    total: int
    loss: float = float("nan")
    lr: float = 0.0
    elapsed: float = 0.0
    eta: float = float("nan")
    logs: dict[str, float] = field(default_factory=dict)
    path: str | None = None
    device: str = ""  # at start: the device and the arithmetic, e.g. "cpu bf16"
    precision: str = ""  # at start: the arithmetic alone (fp32, bf16, fp16)
    reason: str = ""  # for ``done``: "steps" (all steps run) or "stable" (the prediction stopped changing)
    changed: float = float("nan")  # fraction of probe pixels whose class changed at the last check


BundleFn = Callable[[UNet, dict[str, list], dict[str, Any]], dict[str, Any]]


def lr_factor(step: int, total: int, warmup: float, min_ratio: float, decay_from: int | None = None,
              decay_steps: int | None = None) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio`` (step counts from 0).

    By default the decay spans the rest of the run. With ``decay_from`` / ``decay_steps`` (the
    plateau schedule) the rate stays at its peak until ``decay_from`` and decays over
    ``decay_steps``, so stability of the prediction is not tied to the step limit.
    """
    w = max(1, int(round(warmup * total)))
    if step < w:
        return (step + 1) / w
    if decay_from is None:
        t = (step - w) / max(1, total - w)
    else:
        t = max(0.0, (step - decay_from) / max(1, decay_steps or 1))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _edges(classes: torch.Tensor) -> torch.Tensor:
    """Pixels within one pixel of a class boundary of a class map (N, *spatial)."""
    x = classes.unsqueeze(1).float()
    k = 3
    pool = torch.nn.functional.max_pool2d if x.dim() == 4 else torch.nn.functional.max_pool3d
    return (pool(x, k, 1, k // 2) != -pool(-x, k, 1, k // 2)).squeeze(1)


def _flips_off_edges(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Pixels whose class changed, away from the boundaries of either map.

    Boundaries of thin structures (membranes, vessels) flicker by a pixel from step to step while
    the regions stay put; only a region appearing, vanishing or moving counts as a change.
    """
    return (previous != current) & ~_edges(previous) & ~_edges(current)


class StabilityProbe:
    """Decides when more steps stop helping: the class map of a fixed probe batch stops changing.

    Every ``every`` steps the model predicts the probe; once fewer than ``tol`` of its pixels
    changed class away from region boundaries for ``patience`` checks in a row (and at least
    ``min_steps`` ran), it is stable.
    """

    def __init__(self, images: torch.Tensor, every: int, tol: float, patience: int, min_steps: int) -> None:
        self.images, self.every, self.tol = images, max(1, every), tol
        self.patience, self.min_steps = patience, min_steps
        self.previous: torch.Tensor | None = None
        self.calm = 0
        self.changed = float("nan")

    def check(self, model: torch.nn.Module, step: int, autocast: Callable) -> bool:
        """Predict the probe at check steps; True when the run may end."""
        if step % self.every:
            return False
        was_training = model.training
        model.eval()
        with torch.no_grad(), autocast():
            current = model(self.images).argmax(1)
        model.train(was_training)
        if self.previous is not None:
            self.changed = float(_flips_off_edges(self.previous, current).float().mean())
            wash = bool((current == current.flatten()[0]).all())  # one class everywhere: not learnt yet
            self.calm = self.calm + 1 if self.changed < self.tol and not wash else 0
        self.previous = current
        return step >= self.min_steps and self.calm >= self.patience


class WeightAverage:
    """Exponential moving average of a model's weights with a warm-up of the decay.

    The decay at update ``n`` is ``min(decay, (1 + n) / (10 + n))``, so early updates follow the
    model closely and the average never keeps much of the random initialisation (a fixed decay
    would keep ``decay ** n`` of it, a third after 100 steps at 0.99).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        import copy

        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.n = float(decay), 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average toward the model's current weights."""
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        self.n += 1
        for a, b in zip(self.module.state_dict().values(), model.state_dict().values()):
            if a.is_floating_point():
                a.lerp_(b, 1 - d)
            else:
                a.copy_(b)


def _probe_batch(sampler: PatchSampler, size: int = 4) -> np.ndarray:
    """A fixed batch of patches for :class:`StabilityProbe`, drawn without moving the sampler's stream."""
    state = sampler.rng.bit_generator.state
    try:
        return sampler.sample(size)["image"]
    finally:
        sampler.rng.bit_generator.state = state


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and GPU) for reproducible initialisation."""
    torch.manual_seed(seed)


class _LossModule(torch.nn.Module):
    """Model + task as one module, so DistributedDataParallel sees every parameter the loss uses."""

    def __init__(self, model: UNet, task: Task) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(self.model, batch)


def iter_train(model: UNet, task: Task, sampler: PatchSampler, config: TrainConfig, *,
               bundle_fn: BundleFn | None = None, out: str | Path | None = None,
               should_stop: Callable[[], bool] | None = None, resume: dict[str, Any] | None = None,
               ) -> Generator[Progress, None, dict | None]:
    """Train ``model`` on ``task`` with batches from ``sampler``, yielding progress events.

    The generator's return value is the final bundle (``bundle_fn`` at the last step), if any.

    Parameters
    ----------
    bundle_fn
        Builds the bundle to save from the model, the loss history and the training state.
    out
        Where checkpoints go (atomically), every ``config.checkpoint_every`` steps and at the end.
    should_stop
        Polled before each step; when it returns True the run saves and ends with ``cancelled``.
    resume
        The ``training`` section of a bundle written by an interrupted run of the same setup.
    """

    device = get_device(config.device)
    dtype = resolve_precision("fp32" if config.amp is False else config.precision, device)
    autocast = autocast_factory(device, dtype)
    use_amp = dtype == torch.float16  # only fp16 needs loss scaling
    model.to(device)
    task.bind(model)  # tasks whose heads are sized by the network build them now
    task.to(device)
    params = [p for p in list(model.parameters()) + list(task.parameters()) if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": params}]
    if config.encoder_lr_scale != 1.0 and hasattr(model, "encoder"):  # the first group's rate is the one reported
        enc = {id(p) for p in model.encoder.parameters()}
        groups = [{"params": [p for p in params if id(p) not in enc]},
                  {"params": [p for p in params if id(p) in enc], "lr": config.lr * config.encoder_lr_scale}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    plateau = config.schedule == "plateau"
    cool = max(1, int(round(config.cooldown * config.steps)))
    # the plateau schedule decays over the last ``cool`` steps, or from the step the probe found stable
    plan = {"decay_from": config.steps - cool if plateau else None, "end": config.steps}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.steps, config.warmup, config.min_lr_ratio, plan["decay_from"], cool))
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    rank, world_size = distributed.world()
    loss_fn: torch.nn.Module = _LossModule(model, task)
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        loss_fn = DistributedDataParallel(loss_fn, device_ids=ids, find_unused_parameters=True)
        sampler.rng = np.random.default_rng([config.seed, rank])  # each rank draws its own patches
    rng = np.random.default_rng(config.seed + 1 if rank == 0 else [config.seed + 1, rank])
    history: dict[str, list] = {"step": [], "loss": []}
    step = 0
    if resume:
        step = int(resume["step"])
        try:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if "task_state" in resume:
                task.load_state_dict(resume["task_state"])
        except (ValueError, RuntimeError, KeyError) as err:
            from .errors import RegconError
            raise RegconError("The --resume bundle was written by a different kind of run (its optimiser state does "
                              "not fit this method and network); resume with the options of the interrupted run.") from err
        if rank == 0:
            rng.bit_generator.state = resume["rng"]
            sampler.rng.bit_generator.state = resume["sampler_rng"]
        history = {k: list(v) for k, v in resume["history"].items()}
        if int(resume.get("total_steps", -1)) == config.steps:  # the same run resumed: keep its cool-down
            plan.update(resume.get("plan", {}))

    def rng_states() -> dict[str, Any]:
        return {"rng": rng.bit_generator.state, "sampler_rng": sampler.rng.bit_generator.state}

    drawn: dict[str, Any] = {}  # the generators' states after the last batch the run used (set below)

    def state() -> dict[str, Any]:
        return {"step": step, "total_steps": config.steps, "config": config.to_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "task_state": task.state_dict(), **drawn, "history": history, "plan": dict(plan)}

    def checkpoint(bundle: dict | None = None) -> str | None:
        if bundle_fn is None or out is None or rank != 0:
            return None
        return str(save_bundle(bundle if bundle is not None else bundle_fn(model, history, state()), out))

    def final() -> dict | None:
        return None if bundle_fn is None else bundle_fn(model, history, state())

    ema = WeightAverage(model, config.ema) if config.ema > 0 else None
    probe = None
    if config.stop_when_stable:
        probe = StabilityProbe(torch.from_numpy(_probe_batch(sampler)).to(device), config.stable_every,
                               config.stable_tol, config.stable_patience, config.min_steps)
    reason = "stable" if plan["end"] < config.steps else "steps"  # a resumed run may be cooling down already

    drawn.update(rng_states())

    def draw() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        options = task.sample_options  # e.g. neighbouring slices for glrp
        raw = sampler.sample(config.batch_size, **options) if options else sampler.sample(config.batch_size)
        return task.prepare(raw, rng), rng_states()  # a resumed run continues after this batch

    batches = Prefetcher(draw, enabled=config.prefetch)
    try:
        t0 = time.perf_counter()
        done_at_start = step
        yield Progress("start", step, config.steps, device=f"{device} {precision_name(dtype)}",
                       precision=precision_name(dtype))
        model.train()
        task.train()
        while step < plan["end"]:
            if distributed.any_rank(should_stop is not None and should_stop(), device):
                model.eval()
                if ema is not None:
                    model.load_state_dict(ema.module.state_dict())
                result = final()
                path = checkpoint(result)
                yield Progress("cancelled", step, config.steps, elapsed=time.perf_counter() - t0, path=path)
                return result
            batch, states = batches.take(more=step + 1 < plan["end"])
            drawn.update(states)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast():
                loss, logs = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            value = distributed.mean_across_ranks(float(loss.detach()), device)
            history["step"].append(step)
            history["loss"].append(value)
            elapsed = time.perf_counter() - t0
            stable = probe is not None and reason == "steps" and distributed.any_rank(
                probe.check(ema.module if ema is not None else model, step, autocast), device)  # ranks stop together
            if stable and plateau:
                stable = step < plan["decay_from"]  # stable during the final cool-down: nothing to shorten
                if stable:  # cool down from here, then end
                    plan.update(decay_from=step, end=min(config.steps, step + cool))
            if stable:
                reason = "stable"
            eta = elapsed / (step - done_at_start) * (plan["end"] - step)
            yield Progress("step", step, plan["end"], value, optimizer.param_groups[0]["lr"], elapsed, eta, logs,
                           changed=probe.changed if probe is not None else float("nan"))
            if stable and not plateau:
                break
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                path = checkpoint()
                if path:
                    yield Progress("checkpoint", step, config.steps, value, elapsed=elapsed, path=path)
        model.eval()
        if ema is not None:
            model.load_state_dict(ema.module.state_dict())  # the averaged weights are the result
        result = final()
        path = checkpoint(result)
        yield Progress("done", step, config.steps, history["loss"][-1] if history["loss"] else float("nan"),
                       elapsed=time.perf_counter() - t0, path=path, reason=reason)
        return result
    finally:
        batches.close()
