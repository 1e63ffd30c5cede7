"""napari dock widgets: thin front doors onto :mod:`napari_regcon.core` (issue 5).

``RegconWidget`` is the dock widget of the plugin manifest; its four sections can also be used
on their own. Work runs in napari thread workers; the widgets pass arrays, never layers.
"""

from .correct import CorrectWidget
from .finetune import FinetuneWidget
from .main import RegconWidget
from .predict import PredictWidget
from .pretrain import PretrainWidget
from .state import ModelEntry, RunState, RunStatus, Session

__all__ = ["CorrectWidget", "FinetuneWidget", "ModelEntry", "PredictWidget", "PretrainWidget", "RegconWidget",
           "RunState", "RunStatus", "Session"]
