"""Pure PyTorch/NumPy core of napari-regcon: no Qt, no napari."""

from napari_regcon.core.errors import RegconError

__all__ = ["RegconError"]
