"""Section 2: paint sparse labels and fine-tune, with a live preview of the slice in view."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QFormLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_regcon.core.bundle import as_bundle
from napari_regcon.core.errors import RegconError
from napari_regcon.core.options import FinetuneOptions

from .common import LayerChecklist, LayerCombo, ModelPicker, hint, row, warn_thin_isotropic
from .fitting import Section, WrapCheckBox
from .jobs import FinetuneParams, finetune_updates
from .layers import (
    class_names_of,
    current_plane,
    in_viewer,
    labels_kwargs,
    layer_array,
    move_to_top,
    parse_class_names,
    spatial_labels,
    spatial_shape,
    to_layer_data,
    unwrap,
    voxel_size_of,
)
from .options import NetworkOptions, TrainOptions
from .progress import RunPanel
from .runner import Runner
from .state import ModelEntry, PlaneTracker, RunState, RunStatus, Session
from .updates import Finished, PhaseUpdate, PreviewUpdate, Started, StepUpdate, Update

PREVIEW_NAME = "live preview"
PREVIEW_TEXT = "Live preview (slice in view)"
PREVIEW_TIP = ("While training, predict the slice in view with the current model now and then. How often depends "
               "on the run: a preview takes at most ~10% of it, so large planes and 3D models update less often "
               "(the measured interval is shown here during the run). The first steps predict one class "
               "everywhere; the preview appears once the model tells the classes apart.")
WARMING_UP = "live preview warming up (shown once the model tells the classes apart)"


def cadence(times: list[float]) -> float | None:
    """The typical seconds between preview updates arriving at ``times`` (the median interval)."""
    if len(times) < 2:
        return None
    return float(np.median(np.diff(times)))


def cadence_text(seconds: float | None, when: str) -> str:
    """The checkbox text with the cadence measured in a run (``when``: "this run", "the last run")."""
    if seconds is None:
        return PREVIEW_TEXT
    n = f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"
    return f"Live preview (every ~{n} s in {when})"


class FinetuneWidget(QWidget):
    """Fine-tune a segmentation model on a sparsely painted labels layer."""

    done = Signal()

    def __init__(self, viewer: Any, session: Session | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.session = session or Session()
        self.status = RunStatus()
        self.preview_layer: Any = None
        self.preview_every = 3.0  # seconds between live previews (at least; large planes take longer)
        self._run: dict[str, Any] = {}
        self.preview_times: list[float] = []  # when the last run's previews were made (monotonic s)

        self.inputs = QWidget()
        self.image = LayerCombo(viewer, ("image",))
        self.labels = LayerCombo(viewer, ("labels",), none_text="(none yet)")
        self.classes = QLineEdit("background, foreground")
        self.classes.setToolTip("Class names, in label order: the first is label 1, the second label 2, …")
        self.new_labels = QPushButton("New labels layer")
        self.new_labels.setToolTip("Add an empty labels layer for the chosen image, with these class names")
        self.class_hint = hint("")
        self.init = ModelPicker(self.session, ("pretrained", "segmentation"),
                                none_text="random initialisation (no pretraining)")
        self.network = NetworkOptions()
        self.options = TrainOptions(self.network)
        self.preset = self.options.preset
        self.preview = WrapCheckBox(PREVIEW_TEXT)
        self.preview.setToolTip(PREVIEW_TIP)
        self.preview.setChecked(True)
        self.unlabeled = LayerChecklist(viewer, ("image",))
        self.unlabeled.setToolTip("Optional unlabeled images: fine-tuning also learns from them (semi-supervised: two networks "
                                  "teach each other; a step costs about 8 supervised ones on a CPU)")
        self.network.form.addRow("Semi-supervised", self.unlabeled)
        advanced = Section("Advanced")
        advanced.addWidget(self.network)

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Image", self.image)
        form.addRow("Classes", self.classes)
        form.addRow(self.class_hint)
        form.addRow("Labels", row(self.labels, self.new_labels))
        form.addRow("Start from", self.init)
        form.addRow("Data type", self.preset)
        inner = QVBoxLayout(self.inputs)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addLayout(form)
        inner.addWidget(self.options)
        inner.addWidget(self.preview)
        inner.addWidget(advanced)

        self.panel = RunPanel(self.status, "Start fine-tuning")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 4, 0, 4)  # inside a Section: its indent is margin enough
        lay.addWidget(hint("Paint a few strokes of every class on one or two slices — background "
                           "included — then Start. Label 0 means 'not annotated' and is ignored. "
                           "Strokes train with a recipe made for them, which ends by itself once the "
                           "prediction stops changing."))
        lay.addWidget(self.inputs)
        lay.addWidget(self.panel)

        self.classes.textChanged.connect(self._on_classes)
        self.new_labels.clicked.connect(self.create_labels_layer)
        self.init.changed.connect(self._on_init)
        self.status.events.state.connect(self._on_state)
        self.session.retrain_requested.connect(self.retrain)
        self.runner = Runner(self.status, self.session, self._prepare, self._on_update, "fine-tuning")
        self._on_classes()
        self._on_init()

    # ---- form reactions -------------------------------------------------------------------
    def _on_classes(self, *_: Any) -> None:
        names = parse_class_names(self.classes.text())
        listed = ", ".join(f"{v} = {n}" for v, n in names.items())
        self.class_hint.setText(f"Brush values: {listed}; 0 = not annotated (ignored). "
                                "Paint the background as a class of its own.")

    def _on_init(self) -> None:
        """A *Start from* model fixes the data type, Model, width and depth; the form shows them."""
        entry = self.init.current()
        self.options.set_start(entry.bundle if entry is not None else None)

    def _on_state(self, state: RunState) -> None:
        self.inputs.setEnabled(state == RunState.IDLE)
        if state == RunState.IDLE:
            self._end_run()

    # ---- labels layer ----------------------------------------------------------------------
    def create_labels_layer(self) -> Any | None:
        """Add an empty labels layer matching the chosen image, with named classes, ready to paint."""
        img = self.image.layer()
        if img is None:
            show_error("Choose an image layer first; the new labels layer gets its shape and voxel size.")
            return None
        names = parse_class_names(self.classes.text())
        if len(names) < 2:
            show_error("Give at least two class names separated by commas, e.g. background, membrane.")
            return None
        try:
            channel_axis = self.network.channel_axis.resolve(img)
        except RegconError as err:
            show_error(str(err))
            return None
        data = to_layer_data(np.zeros(spatial_shape(layer_array(img).shape, channel_axis), np.uint8), img, channel_axis)
        layer = unwrap(self.viewer.add_labels(data, name=f"{img.name} labels", opacity=0.7,
                                              **labels_kwargs(names, img, channel_axis)))
        layer.brush_size = 6
        layer.selected_label = 1
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self.labels.set_layer(layer)
        show_info(f"Paint with label 1 ({names[1]}) and label 2 ({names[2]}); 0 erases.")
        return layer

    # ---- run ------------------------------------------------------------------------------
    def _prepare(self, stop: threading.Event) -> tuple:
        img, lab = self.image.layer(), self.labels.layer()
        if img is None:
            raise RegconError("Choose the image layer to segment.")
        if lab is None:
            raise RegconError("Choose a labels layer, or press 'New labels layer' and paint a few strokes of every class.")
        channel_axis = self.network.channel_axis.resolve(img)
        image = layer_array(img)
        labels = spatial_labels(layer_array(lab), img, channel_axis)
        want = spatial_shape(image.shape, channel_axis)
        if tuple(labels.shape) != want:
            raise RegconError(f"The labels layer '{lab.name}' has shape {tuple(lab.data.shape)} but the image "
                              f"'{img.name}' has spatial shape {want}; use 'New labels layer' to make a matching one.")
        names = class_names_of(lab) or parse_class_names(self.classes.text())
        entry = self.init.current()
        if self.options.values()["ndim"] == 3:  # the chosen model's, when there is one
            warn_thin_isotropic(self.session, [img], channel_axis)
        options = FinetuneOptions(channel_axis=channel_axis, voxel_size=voxel_size_of(img, channel_axis),
                                  recipe="auto",
                                  **self.options.values(), **self.network.values())
        params = FinetuneParams(options, init=entry.bundle if entry else None, class_names=names,
                                unlabeled=[layer_array(ly) for ly in self.unlabeled.checked_layers()],
                                preview=self.preview.isChecked(), preview_every=self.preview_every)
        tracker = PlaneTracker(current_plane(self.viewer, img, channel_axis))
        preview_on = threading.Event()
        preview_on.set()
        # the preview layer is made (or reused) only when the first preview arrives: a run that fails
        # before then leaves the layers as they were; "restore" undoes it if the run fails later
        self._run = {"image": img, "labels": lab, "channel_axis": channel_axis, "tracker": tracker,
                     "preview_on": preview_on, "start_kind": entry.kind if entry else None, "warned": set(),
                     "preview": params.preview, "preview_times": [], "restore": None}
        self.preview.setText(PREVIEW_TEXT)
        self.viewer.dims.events.current_step.connect(self._on_dims)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        return finetune_updates, (image, labels, params, stop, tracker, preview_on)

    def _on_dims(self, *_: Any) -> None:
        run = self._run
        if run:
            run["tracker"].set(current_plane(self.viewer, run["image"], run["channel_axis"]))

    def _on_layer_removed(self, event: Any) -> None:
        run, layer = self._run, unwrap(event.value)
        if not run:
            return
        if layer is self.preview_layer:
            run["preview_on"].clear()
            self.preview_layer = None
            show_info("The live preview layer was removed: no more previews during this run.")
        elif (layer is run["image"] or layer is run["labels"]) and layer.name not in run["warned"]:
            run["warned"].add(layer.name)
            show_info(f"The layer '{layer.name}' was removed; training continues with the data it had at the start.")

    def _end_run(self) -> None:
        run = self._run
        if not run:
            return
        self.viewer.dims.events.current_step.disconnect(self._on_dims)
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        if self.runner.failed:
            self._restore_preview()
        self._run = {}
        self.preview_times = run["preview_times"]
        self.preview.setText(cadence_text(cadence(self.preview_times), "the last run"))

    def _restore_preview(self) -> None:
        """A failed run leaves the layers as they were: undo what its previews did to the preview layer."""
        restore, self._run["restore"] = self._run.get("restore"), None
        if restore is None:
            return
        layer, before = restore
        if before is None:  # made by this run
            if in_viewer(self.viewer, layer):
                self.viewer.layers.remove(layer)
            self.preview_layer = None
        elif in_viewer(self.viewer, layer):
            layer.data[...] = before
            layer.refresh()
            view = self._run.get("restore_view")
            if view is not None:  # where it was, and whether it was shown
                layers = self.viewer.layers
                layers.move(layers.index(layer), view[0])
                layer.visible = view[1]

    def _on_update(self, upd: Update) -> None:
        if isinstance(upd, StepUpdate) and self.panel.plot is not None:
            self.panel.plot.add_points(upd.points)
        elif isinstance(upd, PhaseUpdate):  # a second network starts: its loss starts high again
            if self.panel.plot is not None:
                self.panel.plot.mark(upd.step, "second pass")
            self.status.activity = upd.label
        elif isinstance(upd, Started) and self._run.get("preview"):
            self.status.activity = WARMING_UP
        elif isinstance(upd, PreviewUpdate):
            self._show_preview(upd)
        elif isinstance(upd, Finished) and upd.result is not None:
            bundle, run = upd.result, self._run
            b = as_bundle(bundle)
            steps = self.status.step if b.training.step is None else b.training.step
            if upd.cancelled and not steps:
                self.status.message = "Stopped before the first step; no model was kept."
                return
            img_name = run["image"].name if run else "image"
            verb = "retrained" if run and run["start_kind"] == "segmentation" else "fine-tuned"
            passes = "2 × " if b.data.self_trained else ""  # two passes of self-training (core/selftrain.py)
            name = f"{verb} on {img_name}, {passes}{steps} steps" + (" (stopped)" if upd.cancelled else "")
            self.session.add(ModelEntry(name, bundle))
            ended = f"Done: {upd.message}. " if upd.message else "Done. "
            self.status.message = ("Stopped early. " if upd.cancelled else ended) + \
                "The model is ready in Predict (Save… there keeps it in a file)."
            show_info(f"Fine-tuning {'stopped' if upd.cancelled else 'finished'}: {name}.")
            self.done.emit()

    def _preview_target(self) -> Any:
        """The live preview layer of this run, made (or reused) when its first preview arrives.

        The run remembers what it changed (the layer it made, or the reused layer's data), so that a
        run failing later leaves the layers as they were.
        """
        run = self._run
        img, channel_axis = run["image"], run["channel_axis"]
        data = to_layer_data(np.zeros(spatial_shape(layer_array(img).shape, channel_axis), np.uint8), img, channel_axis)
        layer = self.preview_layer
        if in_viewer(self.viewer, layer) and tuple(layer.data.shape) == tuple(data.shape):
            run["restore"] = (layer, np.array(layer.data, copy=True))
            run["restore_view"] = (self.viewer.layers.index(layer), layer.visible)
            layer.visible = True  # a Predict after the last run hid it; this run's previews are news again
            move_to_top(self.viewer, layer)  # above the predictions it supersedes
            return layer
        active = self.viewer.layers.selection.active
        names = class_names_of(run["labels"]) or parse_class_names(self.classes.text())
        layer = unwrap(self.viewer.add_labels(data, name=PREVIEW_NAME, opacity=0.5,
                                              **labels_kwargs(names, img, channel_axis)))
        if in_viewer(self.viewer, active):
            self.viewer.layers.selection.active = active  # keep painting where the user was
        self.preview_layer = layer
        run["restore"] = (layer, None)
        return layer

    def _show_preview(self, upd: PreviewUpdate) -> None:
        run = self._run
        if not run or not run["preview_on"].is_set():
            return
        if run["restore"] is None:  # the first preview of this run: it says something, so show it now
            self._preview_target()
        layer = self.preview_layer
        if not in_viewer(self.viewer, layer):
            return
        if self.status.activity == WARMING_UP:
            self.status.activity = ""
        if not upd.final:
            run["preview_times"].append(upd.at)
            self.preview.setText(cadence_text(cadence(run["preview_times"]), "this run"))
        spatial = spatial_labels(layer.data, run["image"], run["channel_axis"])
        if upd.plane is None:
            spatial[...] = upd.labels
        else:
            spatial[...] = 0  # only the plane in view is current; older planes would mislead
            spatial[upd.plane] = upd.labels
        layer.refresh()

    def retrain(self, labels_layer: Any = None) -> None:
        """Fine-tune again from the newest segmentation model (the Correct section's button)."""
        latest = self.session.latest("segmentation")
        if latest is not None:
            self.init.select(latest)
        if labels_layer is not None:
            self.labels.set_layer(labels_layer)
        if self.status.state == RunState.IDLE:
            self.status.state = RunState.RUNNING
