"""The widgets' wording of the core's messages: command-line flags become the form's field names.

The core phrases its :class:`~napari_regcon.core.errors.RegconError` messages for the command
line (``choose a smaller --patch-size``); :func:`widget_text` rewrites them where the widgets
show them (the Runner's notifications and status line), so that a message names the field the
user can change (``choose a smaller Patch size``), never a flag the GUI does not have.
"""

from __future__ import annotations

import re

#: (pattern, replacement), applied in order: whole phrases first, then single flags.
_PHRASES: tuple[tuple[str, str], ...] = (
    (r"--ndim 3 needs a ZYX stack", "A 3D model needs a ZYX stack"),
    (r"use --ndim 2\b", "choose Model: 2D (slice by slice)"),
    (r"--ndim (\d)\b", r"a \1D model"),
    (r"(?:pass|give|check) --channel-axis\b", "set Channel axis (under Advanced)"),
    (r"(^|\. )--channel-axis (-?\d+)", r"\1Channel axis \2"),
    (r"The --init bundle", "The model chosen in 'Start from'"),
    (r"--mask (random|intensity|channel)\b", r"mask=\1"),
    (r"--param ([A-Za-z_]+)=\.\.\.", r"\1=... in Method parameters"),
    (r"--method (\w+)", r"the method \1"),
)

#: Flags that are a field of the widget, by the field's label.
FIELDS: dict[str, str] = {
    "patch-size": "Patch size",
    "batch-size": "Batch size",
    "steps": "Steps",
    "channel-axis": "Channel axis (under Advanced)",
    "ndim": "Model",
    "init": "Start from",
    "method": "Method",
    "mask": "mask (in Method parameters)",
    "param": "Method parameters",
    "tile": "Tile size",
    "lr": "Learning rate",
    "base": "Network width",
    "depth": "Network depth",
    "seed": "Random seed",
    "unlabeled": "Semi-supervised",
}


def widget_text(message: str) -> str:
    """``message`` with every command-line flag of a widget field replaced by the field's name."""
    for pattern, repl in _PHRASES:
        message = re.sub(pattern, repl, message)
    return re.sub(r"--([a-z][a-z-]*)\b", lambda m: FIELDS.get(m.group(1), m.group(0)), message)
