"""napari-regcon: label-efficient segmentation of microscopy stacks.

Self-supervised pretraining on unlabeled stacks, fine-tuning from a few painted labels and
tiled prediction. ``napari_regcon.core`` is the Qt-free library; the CLI and the napari
widgets are thin front doors onto it.
"""

__version__ = "0.1.0"
