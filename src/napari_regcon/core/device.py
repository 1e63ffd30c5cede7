"""Resolve ``auto`` / ``cpu`` / ``cuda`` / ``mps`` to a torch device once, with a clear error; and how
many CPU threads torch gets when the user says nothing."""

from __future__ import annotations

import os

import torch

from .errors import RegconError


def get_device(name: str | torch.device | None = "auto") -> torch.device:
    """Return the device for ``name``; ``auto`` prefers CUDA, then Apple MPS, then CPU."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RegconError("--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine.")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RegconError("--device mps was asked for, but Apple MPS is not available here.")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise RegconError(f"Unknown device {name!r}: use auto, cpu, cuda or mps.") from err


def describe_device(device: torch.device) -> str:
    """A human-readable name: the GPU model for CUDA, else the device type."""
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "GPU: Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it, else all)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """Torch CPU threads for a run the user gave no ``--threads``: the cores other work leaves free.

    ``cores`` minus the 1-minute load average (``os.getloadavg()``, read once, at start), rounded,
    at least 1; all cores where the OS has no load average. On a shared CPU a torch thread that waits
    for a core another process holds spin-waits, and a step with 2 threads on 2 busy cores ran
    several times slower than with 1 (docs/benchmarks.md, "Training speed (issue 14)").
    """
    cores = cpu_cores() if cores is None else max(1, int(cores))
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return cores
    return max(1, min(cores, cores - int(round(load))))
