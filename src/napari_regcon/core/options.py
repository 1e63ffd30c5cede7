"""Option values as users write them, read once for every front door: patch and tile sizes, ``KEY=VALUE``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import RegconError


def parse_patch(value: str | int | Sequence[int] | None, ndim: int) -> tuple[int, ...] | None:
    """Parse ``128`` or ``16,64,64`` into a per-axis patch (or tile) size for an ``ndim`` model."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parts = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            raise RegconError(f"Cannot read the patch size {value!r}; write e.g. 128 or 16,64,64.") from None
    elif isinstance(value, int):
        parts = [value]
    else:
        parts = [int(v) for v in value]
    if len(parts) == 1:
        parts = parts * 2 if ndim == 2 else [max(1, parts[0] // 4), parts[0], parts[0]]
    if len(parts) != ndim or any(p < 1 for p in parts):
        raise RegconError(f"The patch size {value!r} does not fit a {ndim}D model; give 1 or {ndim} positive numbers.")
    return tuple(parts)


def split_params(text: str) -> list[str]:
    """``"ratio=0.5, patch=[4,16,16]; mask=x"`` -> one item per parameter (commas inside brackets stay)."""
    items, depth, cur = [], 0, ""
    for ch in text.replace(";", ","):
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [t.strip() for t in items if t.strip()]


def parse_params(items: str | Iterable[str], option: str | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` items (or one text of them, see :func:`split_params`) -> a dict; values are read as
    JSON when they can be (numbers, lists, true/false), else kept as text; ``-`` in a key becomes ``_``.

    ``option`` names the command-line option the items came from, for the error message.
    """
    params: dict[str, Any] = {}
    for item in split_params(items) if isinstance(items, str) else items:
        if "=" not in item:
            if option is not None:
                raise RegconError(f"{option} expects KEY=VALUE, got {item!r}.")
            raise RegconError(f"Cannot read the method parameter {item!r}; write key=value, e.g. ratio=0.6.")
        key, value = (s.strip() for s in item.split("=", 1))
        key = key.replace("-", "_")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params
