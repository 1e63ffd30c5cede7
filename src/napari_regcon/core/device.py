"""Resolve ``auto`` / ``cpu`` / ``cuda`` / ``mps`` to a torch device once, with a clear error."""

from __future__ import annotations

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
