"""Parse-time checks of the command line: argparse types with one-sentence errors, and the output guard.

Every numeric option is validated by its ``type=`` (argparse turns the ``ArgumentTypeError`` into
one line and exit code 2). :func:`guarded` wraps a command: it applies the output rule of
:mod:`napari_regcon.core.safety` to the command's outputs before any work, holds their locks
while it runs, and reads a colour image's trailing axis as channels.
"""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _number(kind: Callable[[str], Any], text: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, batch size, U-Net width, ...)."""
    v = _number(int, text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def nonneg_int(text: str) -> int:
    """An integer >= 0 (seed, checkpoint interval, label values)."""
    v = _number(int, text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rate)."""
    v = _number(float, text)
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, got {text}")
    return v


def overlap_fraction(text: str) -> float:
    """A tile overlap: 0 <= overlap < 1."""
    v = _number(float, text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"the tile overlap must be at least 0 and less than 1, got {text}")
    return v


def mask_ratio(text: str) -> float:
    """A mim mask ratio: 0 < ratio < 1."""
    v = _number(float, text)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"the mask ratio must be between 0 and 1 (exclusive), got {text}")
    return v


_NAME = re.compile(r"^[A-Za-z0-9_+\- ()]{5,64}$")


def model_name(text: str) -> str:
    """A bioimage.io model name: 5 to 64 letters, digits, spaces and _+-()."""
    if not _NAME.match(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid model name; use 5 to 64 letters, digits, spaces "
                                         "and _+-() only")
    return text.strip()


# --- the output guard -------------------------------------------------------------------------

def _flat(a: argparse.Namespace, names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        v = getattr(a, n, None)
        if v is None:
            continue
        out.extend(str(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return out


def _colour_rule(a: argparse.Namespace, images: list[str]) -> None:
    """A trailing axis of 3 or 4 on a PNG/JPEG/RGB TIFF is channels, as napari reads it."""
    from napari_regcon.core.colour import is_colour_file

    if not hasattr(a, "channel_axis") or a.channel_axis is not None or not images:
        return
    if all(is_colour_file(p) for p in images):
        a.channel_axis = -1


def guarded(outputs: Sequence[str], inputs: Sequence[str], *, bundle: bool = False, images: Sequence[str] = (),
            ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Decorate a ``cmd_*``: apply the output rule to the ``outputs`` attributes of its namespace
    (never one of the ``inputs``, refused when existing unless ``--overwrite``; a ``bundle`` output ends
    in .pt; ``--resume`` may continue its own ``--out``), hold the outputs' locks while the command runs
    (removing an interrupted run's temporary files), and apply the colour rule to ``images``."""

    def wrap(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(cmd)
        def run(a: argparse.Namespace) -> int:
            from napari_regcon.core import distributed, safety

            resume = getattr(a, "resume", None)
            ins = [p for p in _flat(a, inputs) if not (resume and safety.same_file(p, resume))]
            outs = []
            for name in outputs:
                out = getattr(a, name, None)
                if out is None:
                    continue
                cont = bool(resume) and safety.same_file(out, resume)
                safety.check_output(out, ins, overwrite=getattr(a, "overwrite", False), bundle=bundle,
                                    option="--" + name.replace("_", "-"),
                                    may_exist=cont or (Path(out).is_dir() and not any(Path(out).iterdir())))
                outs.append(out)
            safety.check_outputs_differ(outs)
            _colour_rule(a, _flat(a, images))
            if not distributed.is_main():
                return cmd(a)
            with safety.writing(outs):
                return cmd(a)
        return run
    return wrap
