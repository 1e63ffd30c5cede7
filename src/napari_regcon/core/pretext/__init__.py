"""Self-supervised pretext methods, one module each, all behind :class:`Task`."""

from __future__ import annotations

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


__all__ = ["PRETEXTS", "Task", "get_pretext"]
