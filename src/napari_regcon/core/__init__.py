"""Pure PyTorch/NumPy core of napari-regcon: no Qt, no napari."""

from .errors import RegconError

__all__ = ["RegconError"]
