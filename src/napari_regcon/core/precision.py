"""Mixed precision: bf16 on CPUs with bf16 arithmetic units, fp16 on CUDA, fp32 elsewhere.

A fine-tuning step of the default 2D U-Net runs ~1.5x faster under bf16 autocast on a CPU with
AVX-512 BF16 (benchmarks/annotation_loop.py rounds; issue 14). Weights and bundles stay fp32.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import RegconError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX on x86 Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(name: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``name`` on ``device`` (None: plain fp32)."""
    key = (name or "auto").lower()
    if key not in PRECISIONS:
        raise RegconError(f"Unknown precision {name!r}: use {', '.join(PRECISIONS)}.")
    if key == "fp32":
        return None
    if key == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_bf16():
            return torch.bfloat16
        return None
    dtype = torch.bfloat16 if key == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise RegconError("fp16 is for GPUs; on a CPU use --precision bf16 or fp32.")
    return dtype


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    """A zero-argument callable returning the autocast context (a no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
