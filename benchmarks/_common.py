"""Shared helpers of the benchmark scripts: the ISBI 2012 data, machine facts, result files.

Benchmarks are scripts (``python benchmarks/<name>.py``), not tests; each writes
``benchmarks/results/<name>.json`` and ``.md`` that docs/benchmarks.md quotes.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

ISBI = Path(os.environ.get("REGCON_ISBI", "/work/shared/data/isbi2012"))
RESULTS = Path(os.environ.get("REGCON_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


def load_isbi() -> dict[str, np.ndarray]:
    """The ISBI 2012 stacks: ``train_raw``, ``train_mem`` (1 = membrane) and ``test_raw`` (30x512x512 each)."""
    import tifffile

    return {
        "train_raw": tifffile.imread(ISBI / "train_raw.tif"),
        "train_mem": tifffile.imread(ISBI / "train_membrane.tif"),
        "test_raw": tifffile.imread(ISBI / "test_raw_unlabeled.tif"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Date, CPU, core count and library versions, recorded with every result."""
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix().split("/work/main/")[-1], *sys.argv[1:]]),
    }


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> tuple[float, float]:
    """(min, max) of the values, to show alongside a median."""
    return float(min(values)), float(max(values))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table for the terminal."""
    cells = [list(map(str, headers))] + [list(map(str, r)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]])


def write_json(name: str, data: Any) -> Path:
    """Write ``results/<name>.json`` atomically and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float) + "\n")
    os.replace(tmp, path)
    return path


def read_json(name: str) -> Any:
    """The previous ``results/<name>.json``, or None."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_text(name: str, text: str) -> Path:
    """Write ``results/<name>`` (e.g. a Markdown table)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def have_matplotlib() -> bool:
    """True when matplotlib can be imported (plots are optional)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _spin(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        x += 1


@contextmanager
def busy_processes(n: int) -> Iterator[None]:
    """``n`` busy-loop processes at normal priority while the block runs (a laptop that is not idle)."""
    import multiprocessing as mp

    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(n)]
    for proc in spinners:
        proc.start()
    try:
        yield
    finally:
        stop.set()
        for proc in spinners:
            proc.join()


def recipe_spec(text: str | None) -> tuple[str, dict[str, Any] | None]:
    """A ``--recipe NAME[:key=value,...]`` option as (name, recipe parameters); None: ``auto``."""
    from napari_regcon.core.options import parse_params

    name, _, kvs = (text or "auto").partition(":")
    return name, parse_params(kvs.split(",")) if kvs else None
