"""Self-supervised pretext methods, one module each, all behind :class:`Task`."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from ..errors import RegconError
from .base import Task
from .glrp import GLRPPretext
from .lrc import LRCPretext
from .mim import MIMPretext
from .regcon import RegConPretext

PRETEXTS: dict[str, type[Task]] = {MIMPretext.name: MIMPretext}
PRETEXTS.update({cls.name: cls for cls in (RegConPretext, LRCPretext, GLRPPretext)})


def get_pretext(name: str, **params) -> Task:
    """Instantiate the pretext ``name`` with its parameters; unknown names give a clear error."""
    try:
        cls = PRETEXTS[name]
    except KeyError:
        raise RegconError(f"Unknown pretraining method {name!r}; choose one of: {', '.join(sorted(PRETEXTS))}.") from None
    try:
        return cls(**params)
    except TypeError as err:
        raise RegconError(f"Bad parameter for --method {name}: {err}.") from None


def with_voxel_size(method: str, params: dict[str, Any], ndim: int, voxel: Sequence[float] | None) -> dict[str, Any]:
    """``params`` plus ``voxel_size`` when the method takes one, the model is 3D, the user set none and
    the (Z, Y, X) voxel size of the image is known (from the file's metadata, or a layer's scale)."""
    cls = PRETEXTS.get(method)
    try:
        accepts = cls is not None and "voxel_size" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts and ndim == 3 and "voxel_size" not in params and voxel is not None and len(voxel) == 3:
        return {**params, "voxel_size": [float(v) for v in voxel]}
    return params


__all__ = ["PRETEXTS", "Task", "get_pretext", "with_voxel_size"]
