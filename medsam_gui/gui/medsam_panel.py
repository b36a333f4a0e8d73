"""MedSAM dock: box tool, RECIST tool, background embedding, weights, 3D propagation.

Tools (a napari Shapes layer named ``"prompts"`` with the image's scale, so its data
coordinates are display voxel indices):

- **Box**: draw a rectangle on a slice; when it is finished the slice is segmented for the
  active label. Moving or resizing the box segments again (replacing that box's previous
  result).
- **RECIST line**: draw a line along the lesion's long axis; it becomes the square box
  ``core.prompts.recist_to_box(p0, p1, margin)`` (margin in the panel) and is segmented.

Every prompt remembers the label it was drawn for (shape feature ``label``) and a stable id
(feature ``pid``). Each model result is written with ``controller.write_slice_mask`` as ONE
undo step: the slice's pixels of that label become (previous pixels of the label, minus this
prompt's previous result) | new mask; other labels' voxels are kept unless "overwrite other
labels" is ticked.

MedSAM input: the display slice (``controller.display_volume()``, slice along the current
view's display axis) of the scan windowed with MedSAM's reference whole-volume windowing
(``intensity.volume_to_uint8``; CT: the window as displayed, MR/unknown: the percentile auto
window), prepared once per (scan, window) off the GUI thread by
:class:`~medsam_gui.gui.embedding_service.EmbeddingService`, which embeds the slice on screen
first, then its neighbours (setting), optionally all slices; moving the slider re-prioritises.
Box decoding runs on the service's decoder thread; the GUI thread only paints.

3D propagation (``propagate``): the prompts of the active label on the current view's axis are
the key boxes (several key slices: MedSAM's sparse-marker workflow, slices between them get
interpolated boxes); ``core.propagation.propagate`` runs in ``controller.run_worker`` (progress
bar + Cancel in the status bar, also a Cancel button here), each finished slice is painted as it
arrives, Cancel keeps what is done, and the whole run is ONE undo step
(``controller.edit_group`` entered when it starts and closed when the worker finishes, fails or
is cancelled). The next slices' embeddings are requested ahead (``prefetch``).

Scripting/tests: ``set_engine(engine)`` injects a MedSAMEngine; ``set_segmenter(fn)`` injects
any 2D box segmenter ``fn(index, box_xyxy) -> bool (H, W)`` for display slice
``np.take(display_volume, index, axis)`` (used instead of MedSAM by the tools and propagation).
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import config
from ..core.prompts import Box, recist_to_box
from ..errors import CheckpointError, MedsamGuiError
from .embedding_service import EmbeddingService

log = logging.getLogger(__name__)

RECIST_BOXES_LAYER_NAME = "RECIST boxes"
PROMPTS_LAYER_NAME = "prompts"
SETTINGS_KEY = "medsam_panel"
MODEL_NAME = "medsam_vit_b"
WINDOW_DEBOUNCE_MS = 500
DEFAULTS = {
    "recist_margin": 5.0,
    "prop_margin": 5,
    "overwrite_other": False,
    "precision": "auto",
    "device": "auto",
    "neighbours": 2,
    "prefetch_all": False,
    "background": True,
}
AXIS_NAMES = {0: "axial", 1: "coronal", 2: "sagittal"}


class _Failed:
    """A propagation generator's return value when it raised (see :func:`_guarded`)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _guarded(gen):
    """Run ``gen`` and turn an exception into a returned :class:`_Failed`.

    superqt's generator workers treat a RuntimeError raised by the generator (torch raises
    those) as "the worker was deleted": they only warn and emit neither ``errored`` nor
    ``finished``, so the task would never end. Returning the failure avoids that.
    """
    try:
        result = yield from gen
    except Exception as exc:  # noqa: BLE001 - handed to on_done
        return _Failed(exc)
    return result


def _action_name(event) -> str:
    action = getattr(event, "action", None)
    return str(getattr(action, "value", action))


class MedSAMPanel(QWidget):
    """The MedSAM dock widget (see the module docstring).

    Signals: ``slice_painted(axis, index)`` after a model result is written;
    ``propagation_finished(str)`` ("done", "cancelled" or "failed"); ``engine_changed(object)``.
    Attributes (for scripts/tests): ``service`` (EmbeddingService), ``timings`` (list of dicts
    ``decode_ms``, ``paint_ms``, ``total_ms`` per box result), ``last_propagation`` (list of
    (index, kind, box) painted by the last propagation), ``weights_dialog``.
    """

    slice_painted = Signal(int, int)
    propagation_finished = Signal(str)
    engine_changed = Signal(object)

    def __init__(self, controller, service: EmbeddingService | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        saved = config.get_setting(SETTINGS_KEY, {})
        self.settings = dict(DEFAULTS)
        if isinstance(saved, dict):
            self.settings.update({k: v for k, v in saved.items() if k in DEFAULTS})
        self.service = service or EmbeddingService(
            neighbours=int(self.settings["neighbours"]), prefetch_all=bool(self.settings["prefetch_all"]),
            background=bool(self.settings["background"]))
        if service is not None:
            self.settings["neighbours"] = service.neighbours
            self.settings["prefetch_all"] = service.prefetch_all
            self.settings["background"] = service.background
        self._engine = None
        self._engine_handle = None
        self._segmenter: Callable | None = None
        self._prompts = None
        self._recist_boxes = None  # Shapes layer showing the square box of each RECIST line
        self._pids = itertools.count(1)
        self._painted: dict[int, tuple] = {}
        self._jobs: dict[tuple, tuple] = {}
        self._waiting_engine: list[int] = []
        self.timings: list[dict] = []
        self.last_propagation: list[tuple] = []
        self.weights_dialog = None
        self._prop_handle = None
        self._prop_group = None
        self._prop_cancel: threading.Event | None = None
        self._prop_state = ""
        self._prop_total = 0
        self._prop_label = 0
        self._prop_axis = 0
        self._auto_load_tried = False
        self._build()
        self._connect()

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        s = self.settings
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)

        self.model_label = QLabel("MedSAM: weights not loaded")
        self.model_label.setWordWrap(True)
        self.embed_label = QLabel("")
        self.embed_label.setWordWrap(True)
        layout.addWidget(self.model_label)
        layout.addWidget(self.embed_label)

        tools = QGroupBox("Segment a slice")
        tl = QVBoxLayout(tools)
        row = QHBoxLayout()
        self.box_button = QPushButton("Box")
        self.box_button.setCheckable(True)
        self.box_button.setToolTip("Draw a rectangle around the structure; moving or resizing it segments again")
        self.recist_button = QPushButton("RECIST line")
        self.recist_button.setCheckable(True)
        self.recist_button.setToolTip("Draw a line along the lesion's long axis; it becomes a square box")
        self.select_button = QPushButton("Move / resize")
        self.select_button.setCheckable(True)
        self.select_button.setToolTip("Select, move or resize prompts (each change segments again)")
        for b in (self.box_button, self.recist_button, self.select_button):
            row.addWidget(b)
        tl.addLayout(row)
        form = QFormLayout()
        self.recist_margin_spin = QDoubleSpinBox()
        self.recist_margin_spin.setRange(0.0, 200.0)
        self.recist_margin_spin.setDecimals(1)
        self.recist_margin_spin.setSuffix(" px")
        self.recist_margin_spin.setValue(float(s["recist_margin"]))
        self.recist_margin_spin.setToolTip("Margin around a RECIST line, on each side, in pixels")
        form.addRow("RECIST margin", self.recist_margin_spin)
        tl.addLayout(form)
        self.overwrite_check = QCheckBox("Overwrite other labels")
        self.overwrite_check.setChecked(bool(s["overwrite_other"]))
        self.overwrite_check.setToolTip("Unticked: model results never replace voxels of other labels")
        tl.addWidget(self.overwrite_check)
        self.clear_button = QPushButton("Clear prompts")
        self.clear_button.setToolTip("Remove all boxes and lines (the labels stay)")
        tl.addWidget(self.clear_button)
        layout.addWidget(tools)

        prop = QGroupBox("Propagate in 3D")
        pl = QFormLayout(prop)
        self.axis_label = QLabel("axial")
        pl.addRow("Along", self.axis_label)
        self.from_spin = QSpinBox()
        self.to_spin = QSpinBox()
        self.from_button = QPushButton("Current")
        self.to_button = QPushButton("Current")
        self.from_button.setToolTip("Set from the current slice")
        self.to_button.setToolTip("Set from the current slice")
        r1 = QHBoxLayout()
        r1.addWidget(self.from_spin, 1)
        r1.addWidget(self.from_button)
        r2 = QHBoxLayout()
        r2.addWidget(self.to_spin, 1)
        r2.addWidget(self.to_button)
        pl.addRow("First slice", r1)
        pl.addRow("Last slice", r2)
        self.prop_margin_spin = QSpinBox()
        self.prop_margin_spin.setRange(0, 100)
        self.prop_margin_spin.setSuffix(" px")
        self.prop_margin_spin.setValue(int(s["prop_margin"]))
        self.prop_margin_spin.setToolTip("Pixels added around each slice's mask for the next slice's box")
        pl.addRow("Margin", self.prop_margin_spin)
        r3 = QHBoxLayout()
        self.propagate_button = QPushButton("Propagate in 3D")
        self.propagate_button.setToolTip(
            "Follow the active label through the scan from its boxes/lines on this view's slices "
            "(several key slices: the slices between use interpolated boxes). One undo step.")
        self.cancel_prop_button = QPushButton("Cancel")
        self.cancel_prop_button.setEnabled(False)
        r3.addWidget(self.propagate_button, 1)
        r3.addWidget(self.cancel_prop_button)
        pl.addRow(r3)
        self.prop_label = QLabel("")
        self.prop_label.setWordWrap(True)
        pl.addRow(self.prop_label)
        layout.addWidget(prop)

        model = QGroupBox("Model")
        ml = QFormLayout(model)
        self.precision_combo = QComboBox()
        from ..models.device import PRECISION_CHOICES

        self.precision_combo.addItems(["auto", "fp32", "fast", "int8", "bf16", "fp16"])
        self.precision_combo.setCurrentText(str(s["precision"]) if s["precision"] in PRECISION_CHOICES else "auto")
        self.precision_combo.setToolTip(
            "auto: bfloat16 on a GPU, 'fast' on the CPU\n"
            "fp32: MedSAM's reference inference, bit for bit\n"
            "fast: the reference's float32 numbers, ~1.7x faster on a CPU\n"
            "int8: ~1.9x faster on a CPU, masks agree with fp32 (Dice >= 0.98)\n"
            "bf16 / fp16: for GPUs")
        self.device_combo = QComboBox()
        self._fill_devices()
        ml.addRow("Precision", self.precision_combo)
        ml.addRow("Device", self.device_combo)
        self.background_check = QCheckBox("Embed slices in the background")
        self.background_check.setChecked(bool(s["background"]))
        self.neighbours_spin = QSpinBox()
        self.neighbours_spin.setRange(0, 50)
        self.neighbours_spin.setValue(int(s["neighbours"]))
        self.neighbours_spin.setToolTip("Slices on each side of the current slice embedded ahead")
        self.prefetch_all_check = QCheckBox("Then all slices")
        self.prefetch_all_check.setChecked(bool(s["prefetch_all"]))
        ml.addRow(self.background_check)
        ml.addRow("Neighbours", self.neighbours_spin)
        ml.addRow(self.prefetch_all_check)
        self.weights_button = QPushButton("Load MedSAM weights…")
        ml.addRow(self.weights_button)
        layout.addWidget(model)
        layout.addStretch(1)

    def _fill_devices(self) -> None:
        choices = ["auto", "cpu"]
        torch = sys.modules.get("torch")
        try:
            if torch is not None and torch.cuda.is_available():
                choices.append("cuda")
        except Exception:  # pragma: no cover - broken CUDA setup
            pass
        current = self.device_combo.currentText() or str(self.settings["device"])
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        self.device_combo.addItems(choices)
        self.device_combo.setCurrentText(current if current in choices else "auto")
        self.device_combo.blockSignals(False)

    def _connect(self) -> None:
        c = self.controller
        self.box_button.clicked.connect(lambda _=False: self.activate_box_tool())
        self.recist_button.clicked.connect(lambda _=False: self.activate_recist_tool())
        self.select_button.clicked.connect(lambda _=False: self.activate_select_tool())
        self.clear_button.clicked.connect(lambda _=False: self.clear_prompts())
        self.propagate_button.clicked.connect(lambda _=False: self.propagate())
        self.cancel_prop_button.clicked.connect(lambda _=False: self.cancel_propagation())
        self.from_button.clicked.connect(lambda _=False: self.from_spin.setValue(self._current_index()))
        self.to_button.clicked.connect(lambda _=False: self.to_spin.setValue(self._current_index()))
        self.weights_button.clicked.connect(lambda _=False: self.show_weights_dialog())
        self.recist_margin_spin.valueChanged.connect(lambda v: self._save("recist_margin", float(v)))
        self.recist_margin_spin.valueChanged.connect(lambda _v: self.update_recist_boxes())
        self.prop_margin_spin.valueChanged.connect(lambda v: self._save("prop_margin", int(v)))
        self.overwrite_check.toggled.connect(lambda v: self._save("overwrite_other", bool(v)))
        self.precision_combo.currentTextChanged.connect(self._on_model_settings)
        self.device_combo.currentTextChanged.connect(self._on_model_settings)
        self.background_check.toggled.connect(self._on_embed_settings)
        self.neighbours_spin.valueChanged.connect(self._on_embed_settings)
        self.prefetch_all_check.toggled.connect(self._on_embed_settings)

        c.volume_changed.connect(self._on_volume_changed)
        c.view_changed.connect(self._on_view_changed)
        c.window_changed.connect(self._on_window_changed)
        c.active_label_changed.connect(self._on_active_label)
        c.viewer.dims.events.current_step.connect(self._on_dims)
        self._window_timer = QTimer(self)
        self._window_timer.setSingleShot(True)
        self._window_timer.setInterval(WINDOW_DEBOUNCE_MS)
        self._window_timer.timeout.connect(self._reconfigure)

        sv = self.service
        sv.started.connect(self._on_embed_started)
        sv.done.connect(self._on_embed_done)
        sv.error.connect(self._on_embed_error)
        sv.mask_ready.connect(self._on_mask_ready)
        sv.mask_failed.connect(self._on_mask_failed)
        sv.waiting.connect(self._on_waiting)
        # e.g. "The GPU ran out of memory: continuing on the CPU (slower)"
        sv.notice.connect(lambda msg: self.controller.status(msg, 15000))

    def _save(self, key: str, value) -> None:
        self.settings[key] = value
        config.try_set_setting(SETTINGS_KEY, dict(self.settings))

    # ------------------------------------------------------------------ engine / weights
    @property
    def engine(self):
        return self._engine

    def set_engine(self, engine) -> None:
        """Use ``engine`` (a MedSAMEngine; None unloads). Starts background embedding."""
        self._engine = engine
        self.service.set_engine(engine)
        self._reconfigure()
        self._fill_devices()
        if engine is not None:
            dev = getattr(engine, "device", "?")
            self.model_label.setText(f"MedSAM ready on {dev} ({getattr(engine, 'precision', 'fp32')})")
            pending, self._waiting_engine = self._waiting_engine, []
            for pid in pending:
                self._segment_pid(pid)
        else:
            self.model_label.setText("MedSAM: weights not loaded")
        self.engine_changed.emit(engine)

    def set_segmenter(self, fn: Callable | None) -> None:
        """Use ``fn(index, box_xyxy) -> bool (H, W)`` instead of MedSAM (None: back to MedSAM)."""
        self._segmenter = fn
        if fn is not None:
            self.model_label.setText("Using an injected segmenter instead of MedSAM")
            pending, self._waiting_engine = self._waiting_engine, []
            for pid in pending:
                self._segment_pid(pid)

    def ensure_engine(self, reason: str = "") -> bool:
        """True when a segmenter is ready; otherwise starts loading MedSAM (or opens the
        weights dialog when no weights are found) and returns False."""
        if self._engine is not None or self._segmenter is not None:
            return True
        if self._engine_handle is not None and not self._engine_handle.finished:
            return False
        from ..models import weights as manager

        path = manager.resolve(MODEL_NAME)
        if path is None:
            self.show_weights_dialog(reason or "No MedSAM weights were found on this computer.")
            return False
        self.load_engine(path)
        return False

    def load_engine(self, path: str | Path | None = None):
        """Load MedSAM from ``path`` (default: the model manager's file) off the GUI thread."""
        from ..models import weights as manager

        path = Path(path) if path is not None else manager.resolve(MODEL_NAME)
        if path is None:
            self.show_weights_dialog("No MedSAM weights were found on this computer.")
            return None
        device = self.device_combo.currentText() or "auto"
        precision = self.precision_combo.currentText() or "fp32"
        self.model_label.setText(f"Loading MedSAM from {path.name}…")

        def work():
            from ..models.medsam import MedSAMEngine

            return MedSAMEngine(path, device=device, precision=precision)

        def failed(exc):
            self.model_label.setText("MedSAM: weights not loaded")
            if isinstance(exc, CheckpointError):
                self.show_weights_dialog(f"The MedSAM weights could not be used: {exc}")
            else:
                self.controller.show_error(exc, title="Could not load MedSAM")

        self._engine_handle = self.controller.run_worker(
            work, on_done=self.set_engine, on_error=failed, description=f"Loading MedSAM ({path.name})…",
            cancellable=False)
        return self._engine_handle

    def show_weights_dialog(self, reason: str = ""):
        """Open the weights dialog (non-blocking); accepted weights are loaded at once."""
        from .weights_dialog import WeightsDialog

        if self.weights_dialog is not None:
            try:
                if self.weights_dialog.isVisible():
                    self.weights_dialog.raise_()
                    return self.weights_dialog
            except RuntimeError:
                pass
        parent = self.controller.window.qt_window if self.controller.window is not None else self
        dlg = WeightsDialog(parent, MODEL_NAME, reason)
        dlg.weights_ready.connect(lambda p: self.load_engine(p))
        self.weights_dialog = dlg
        dlg.open()
        return dlg

    def _on_model_settings(self, _text=None) -> None:
        self._save("precision", self.precision_combo.currentText())
        self._save("device", self.device_combo.currentText())
        eng = self._engine
        path = getattr(eng, "checkpoint_path", None)
        if eng is not None and path is not None:
            self.load_engine(path)

    def _on_embed_settings(self, _v=None) -> None:
        self._save("background", self.background_check.isChecked())
        self._save("neighbours", self.neighbours_spin.value())
        self._save("prefetch_all", self.prefetch_all_check.isChecked())
        self.service.apply_settings(neighbours=self.neighbours_spin.value(),
                                    prefetch_all=self.prefetch_all_check.isChecked(),
                                    background=self.background_check.isChecked())

    # ------------------------------------------------------------------ scan / view events
    def _axis(self) -> int:
        return int(self.controller.view_axis)

    def _current_index(self, axis: int | None = None) -> int:
        c = self.controller
        if c.volume is None:
            return 0
        return int(c.current_slice(self._axis() if axis is None else axis))

    def _bounds(self):
        """MedSAM window: CT -> the displayed window; MR/unknown -> None (auto percentile window)."""
        c = self.controller
        if c.volume is not None and c.volume.modality == "CT":
            return c.window_bounds
        return None

    def _reconfigure(self) -> None:
        c = self.controller
        if c.volume is None:
            return
        axis = self._axis()
        self.service.set_focus(self._current_index(axis))
        self.service.configure(c.volume, c.orientation, self._bounds(), axis, modality=c.volume.modality)

    def _on_volume_changed(self, volume) -> None:
        self._painted.clear()
        self._jobs.clear()
        layer = self._prompts
        if layer is not None and layer in self.controller.viewer.layers:
            self.controller.viewer.layers.remove(layer)
        boxes = self._recist_boxes
        if boxes is not None and boxes in self.controller.viewer.layers:
            self.controller.viewer.layers.remove(boxes)
        self._prompts = None
        self._recist_boxes = None
        self._update_limits()
        self._reconfigure()
        if self._engine is None and self._segmenter is None and not self._auto_load_tried:
            from ..models import weights as manager

            self._auto_load_tried = True
            if manager.resolve(MODEL_NAME) is not None:
                self.load_engine()

    def _on_view_changed(self, _view: str) -> None:
        self._update_limits()
        self._reconfigure()

    def _on_window_changed(self, _lo: float, _hi: float) -> None:
        if self.controller.volume is not None and self.controller.volume.modality == "CT":
            self._window_timer.start()

    def _on_active_label(self, value: int) -> None:
        layer = self._prompts
        if layer is not None:
            layer.feature_defaults = {"label": int(value), "pid": -1}

    def _on_dims(self, _event=None) -> None:
        c = self.controller
        if c.volume is None or c.image_layer is None:
            return
        axis = self.service.axis if self.service.axis is not None else self._axis()
        try:
            self.service.set_focus(c.current_slice(axis))
        except Exception:  # the layers are being replaced
            return
        self._update_embed_label()

    def _update_limits(self) -> None:
        c = self.controller
        if c.volume is None:
            return
        axis = self._axis()
        n = int(c.orientation.display_shape(c.volume.shape)[axis])
        for spin in (self.from_spin, self.to_spin):
            spin.blockSignals(True)
            spin.setRange(0, max(0, n - 1))
            spin.blockSignals(False)
        self.from_spin.setValue(0)
        self.to_spin.setValue(max(0, n - 1))
        self.axis_label.setText(f"{AXIS_NAMES.get(axis, str(axis))} (display axis {axis}, {n} slices)")

    # ------------------------------------------------------------------ embedding status
    def _update_embed_label(self) -> None:
        sv = self.service
        if sv.engine is None or self.controller.volume is None or sv.axis is None:
            return
        try:
            idx = self.controller.current_slice(sv.axis)
        except Exception:
            return
        state = "ready" if sv.has_embedding(idx) else "not embedded yet"
        extra = f" — {sv.last_message}" if sv.last_message else ""
        self.embed_label.setText(f"Slice {idx}: {state}{extra}")

    def _on_embed_started(self, index: int) -> None:
        self.controller.status(f"MedSAM: embedding slice {index}…", 0)
        self._update_embed_label()

    def _on_embed_done(self, index: int, seconds: float) -> None:
        self.controller.status(f"MedSAM: slice {index} embedded in {seconds:.1f} s", 6000)
        self._update_embed_label()

    def _on_embed_error(self, index: int, exc) -> None:
        where = f" (slice {index})" if index >= 0 else ""
        self.controller.show_error(exc if isinstance(exc, BaseException) else str(exc),
                                   title=f"MedSAM embedding failed{where}")

    # ------------------------------------------------------------------ prompts layer / tools
    @property
    def prompts_layer(self):
        """The napari Shapes layer "prompts" (created on demand, same scale as the image)."""
        c = self.controller
        layer = self._prompts
        if layer is not None and layer in c.viewer.layers:
            return layer
        if c.volume is None:
            raise MedsamGuiError("No scan is open. Open a scan first (File > Open scan…).")
        layer = c.viewer.add_shapes(
            ndim=3, name=PROMPTS_LAYER_NAME, scale=tuple(c.image_layer.scale),
            translate=tuple(c.image_layer.translate), edge_color="yellow", face_color="transparent",
            edge_width=1.5, features={"label": np.zeros(0, dtype=int), "pid": np.zeros(0, dtype=int)},
            **({"units": c.image_layer.units} if getattr(c.image_layer, "units", None) is not None else {}),
        )
        layer.feature_defaults = {"label": int(c.active_label), "pid": -1}
        layer.events.data.connect(self._on_prompts_data)
        units = getattr(c.image_layer, "units", None)
        boxes = c.viewer.add_shapes(
            ndim=3, name=RECIST_BOXES_LAYER_NAME, scale=tuple(c.image_layer.scale),
            translate=tuple(c.image_layer.translate), edge_color="#ffd54a", face_color="transparent",
            edge_width=1.0, opacity=0.7, **({"units": units} if units is not None else {}))
        boxes.editable = False
        # the prompts layer stays the active one (on top, receiving the user's drawing)
        c.viewer.layers.move(c.viewer.layers.index(boxes), c.viewer.layers.index(layer))
        c.viewer.layers.selection.active = layer
        self._recist_boxes = boxes
        self._prompts = layer
        return layer

    @property
    def recist_boxes_layer(self):
        """The Shapes layer showing the square box each RECIST line is segmented with (or None)."""
        layer = self._recist_boxes
        return layer if layer is not None and layer in self.controller.viewer.layers else None

    def update_recist_boxes(self) -> None:
        """Show, for every RECIST line of the prompts layer, the square box MedSAM gets."""
        boxes = self.recist_boxes_layer
        layer = self._prompts
        if boxes is None:
            return
        rects = []
        if layer is not None and layer in self.controller.viewer.layers:
            for i in range(len(layer.data)):
                stype = layer.shape_type[i]
                if not (stype == "line" or (stype == "path" and len(layer.data[i]) == 2)):
                    continue
                try:
                    axis, index, (x0, y0, x1, y1), _t, _lab = self.prompt_geometry(i)
                except (MedsamGuiError, IndexError, KeyError):
                    continue
                r, cc = [a for a in range(3) if a != axis]
                corners = np.zeros((4, 3))
                corners[:, axis] = index
                corners[:, r] = (y0, y0, y1, y1)
                corners[:, cc] = (x0, x1, x1, x0)
                rects.append(corners)
        boxes.data = []
        if rects:
            boxes.add_rectangles(rects, edge_color="#ffd54a", edge_width=1.0)

    def _activate(self, mode: str, button) -> None:
        c = self.controller
        if c.volume is None:
            button.setChecked(False)
            c.show_error("Open a scan first (File > Open scan…).")
            return
        layer = self.prompts_layer
        layer.feature_defaults = {"label": int(c.active_label), "pid": -1}
        c.viewer.layers.selection.active = layer
        layer.mode = mode
        for b in (self.box_button, self.recist_button, self.select_button):
            b.setChecked(b is button)
        if mode != "select":
            self.ensure_engine()

    def activate_box_tool(self) -> None:
        """Rectangle mode on the prompts layer (and load MedSAM / ask for its weights)."""
        self._activate("add_rectangle", self.box_button)

    def activate_recist_tool(self) -> None:
        """Line mode on the prompts layer (RECIST long axis)."""
        self._activate("add_line", self.recist_button)

    def activate_select_tool(self) -> None:
        self._activate("select", self.select_button)

    def clear_prompts(self) -> None:
        layer = self._prompts
        if layer is not None and len(layer.data):
            layer.selected_data = set(range(len(layer.data)))
            layer.remove_selected()
        self._painted.clear()

    # ------------------------------------------------------------------ prompt geometry
    def _pid_index(self, pid: int) -> int | None:
        layer = self._prompts
        if layer is None:
            return None
        pids = np.asarray(layer.features["pid"]) if len(layer.data) else np.zeros(0, int)
        hits = np.flatnonzero(pids == pid)
        return int(hits[0]) if hits.size else None

    def prompt_geometry(self, i: int) -> tuple[int, int, tuple, str, int]:
        """(display axis, slice index, box (x0, y0, x1, y1) clipped to the slice, shape type,
        label) of prompt ``i`` of the prompts layer. Lines become RECIST square boxes."""
        layer = self.prompts_layer
        verts = np.asarray(layer.data[i], dtype=float)
        stype = layer.shape_type[i]
        label = int(layer.features["label"].iloc[i])
        flat = [a for a in range(3) if np.ptp(verts[:, a]) < 1e-3]
        view_axis = self._axis()
        axis = view_axis if view_axis in flat else (flat[0] if flat else view_axis)
        index = int(round(float(np.mean(verts[:, axis]))))
        r, cc = [a for a in range(3) if a != axis]
        c = self.controller
        shape = c.orientation.display_shape(c.volume.shape)
        h, w = int(shape[r]), int(shape[cc])
        ys, xs = verts[:, r], verts[:, cc]
        if stype == "line" or (stype == "path" and len(verts) == 2):
            box = recist_to_box((xs[0], ys[0]), (xs[-1], ys[-1]), margin=float(self.recist_margin_spin.value()))
        else:
            box = Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
        if box.x1 < 0 or box.y1 < 0 or box.x0 > w - 1 or box.y0 > h - 1:
            raise MedsamGuiError("The box lies outside the image; draw it on the scan.")
        if not 0 <= index < shape[axis]:
            raise MedsamGuiError(f"The prompt is on slice {index}, outside the scan.")
        return axis, index, box.clip(h, w).xyxy(), stype, label

    def key_boxes(self, axis: int | None = None, label: int | None = None) -> dict[int, tuple]:
        """{slice index: box} of the prompts of ``label`` (default: active) on display ``axis``
        (default: the current view's); several prompts on one slice give their union box."""
        axis = self._axis() if axis is None else int(axis)
        label = int(self.controller.active_label if label is None else label)
        out: dict[int, tuple] = {}
        layer = self._prompts
        if layer is None or layer not in self.controller.viewer.layers:
            return out
        for i in range(len(layer.data)):
            try:
                a, idx, box, _t, lab = self.prompt_geometry(i)
            except MedsamGuiError:
                continue
            if a != axis or lab != label:
                continue
            if idx in out:
                k = out[idx]
                box = (min(k[0], box[0]), min(k[1], box[1]), max(k[2], box[2]), max(k[3], box[3]))
            out[idx] = tuple(float(v) for v in box)
        return out

    # ------------------------------------------------------------------ prompt events -> segmentation
    def _on_prompts_data(self, event) -> None:
        action = _action_name(event)
        layer = self._prompts
        if layer is None:
            return
        if action in ("added", "changed", "removed"):
            self.update_recist_boxes()
        if action == "added":
            if not len(layer.data):
                return
            pids = np.asarray(layer.features["pid"]).astype(int)
            for i in np.flatnonzero(pids < 0):
                pid = next(self._pids)
                layer.features.loc[int(i), "pid"] = pid
                self._segment_pid(pid)
        elif action == "changed":
            if not len(layer.data):
                return
            pids = np.asarray(layer.features["pid"]).astype(int)
            for i in event.data_indices:
                i = int(i)
                if -len(pids) <= i < len(pids) and pids[i] > 0:
                    self._segment_pid(int(pids[i]))
        elif action == "removed":
            present = set(np.asarray(layer.features["pid"]).astype(int).tolist()) if len(layer.data) else set()
            for pid in [p for p in self._painted if p not in present]:
                del self._painted[pid]

    def _segment_pid(self, pid: int) -> None:
        i = self._pid_index(pid)
        if i is None:
            return
        try:
            axis, index, box, stype, label = self.prompt_geometry(i)
        except MedsamGuiError as exc:
            self.controller.status(f"MedSAM: {exc}", 8000)
            return
        self.segment_box(axis, index, box, label, token=pid)

    def segment_box(self, axis: int, index: int, box, label: int | None = None, *, token=None) -> None:
        """Segment ``box`` (x0, y0, x1, y1) on display slice ``index`` along display ``axis`` for
        ``label`` (default: active) and write the result as one undo step. Asynchronous with
        MedSAM (the result is painted when the decoder is done; ``slice_painted`` follows)."""
        c = self.controller
        label = int(c.active_label if label is None else label)
        token = token if token is not None else ("box", axis, index, tuple(box))
        t0 = time.perf_counter()
        if self._segmenter is not None:
            try:
                mask = np.asarray(self._segmenter(int(index), tuple(box)), dtype=bool)
            except Exception as exc:  # noqa: BLE001 - a broken segmenter is shown, not raised
                c.show_error(exc, title="Segmentation failed")
                return
            dec = (time.perf_counter() - t0) * 1000.0
            self._paint_result(token, axis, index, label, mask, t0, dec)
            return
        if self._engine is None:
            if isinstance(token, int) and token not in self._waiting_engine:
                self._waiting_engine.append(token)
            self.ensure_engine()
            return
        if self.service.axis != axis:
            self.service.configure(c.volume, c.orientation, self._bounds(), axis, modality=c.volume.modality)
        gen = self.service.segment_async(token, int(index), box)
        self._jobs[(token, gen)] = (t0, int(axis), int(index), label)
        if not self.service.has_embedding(int(index)):
            c.status(f"MedSAM: slice {index} is being embedded; the mask follows…", 0)

    def _on_waiting(self, token, index: int) -> None:
        self.controller.status(f"MedSAM: waiting for slice {index}'s embedding…", 0)

    def _on_mask_ready(self, token, index: int, box, mask, decode_ms: float, gen: int) -> None:
        job = self._jobs.pop((token, gen), None)
        if job is None or not self.service.is_latest(token, gen):
            return
        t0, axis, idx, label = job
        if isinstance(token, int) and self._pid_index(token) is None:
            return  # the prompt was deleted meanwhile
        self._paint_result(token, axis, idx, label, mask, t0, decode_ms, box=box)

    def _on_mask_failed(self, token, exc) -> None:
        for key in [k for k in self._jobs if k[0] == token]:
            self._jobs.pop(key, None)
        self.controller.show_error(exc if isinstance(exc, BaseException) else str(exc),
                                   title="MedSAM could not segment the box")

    def _paint_result(self, token, axis: int, index: int, label: int, mask: np.ndarray, t0: float,
                      decode_ms: float, box=None) -> None:
        c = self.controller
        if c.volume is None:
            return
        tp = time.perf_counter()
        data = c.display_labels()
        current = np.take(data, int(index), axis=int(axis)) == label
        keep = current.copy()
        old = self._painted.get(token)
        if old is not None and old[:3] == (axis, index, label):
            keep &= ~old[3]
        new = keep | mask
        try:
            changed = c.write_slice_mask(axis, index, new, label, overwrite_other=self.overwrite_check.isChecked())
        except Exception as exc:  # noqa: BLE001
            c.show_error(exc, title="Could not write the mask")
            return
        self._painted[token] = (axis, index, label, mask.copy())
        now = time.perf_counter()
        paint_ms = (now - tp) * 1000.0
        total_ms = (now - t0) * 1000.0
        self.timings.append({"decode_ms": float(decode_ms), "paint_ms": paint_ms, "total_ms": total_ms,
                             "box": None if box is None else tuple(box)})
        c.status(f"MedSAM: label {label} on slice {index}: {int(mask.sum())} pixels, {changed} voxels changed "
                 f"(decoder {decode_ms:.0f} ms, paint {paint_ms:.0f} ms)", 6000)
        self.slice_painted.emit(int(axis), int(index))

    # ------------------------------------------------------------------ 3D propagation
    @property
    def propagating(self) -> bool:
        return self._prop_handle is not None and not self._prop_handle.finished

    def propagate(self, axis: int | None = None, limits: tuple[int, int] | None = None,
                  margin: int | None = None, label: int | None = None):
        """Propagate ``label`` (default: active) from its key boxes on display ``axis`` (default:
        the current view's) within ``limits`` (inclusive display slice numbers; default: the
        panel's spin boxes). Returns the WorkerHandle, or None when it could not start."""
        from ..core import propagation

        c = self.controller
        if c.volume is None:
            c.show_error("Open a scan first (File > Open scan…).")
            return None
        if self.propagating:
            c.status("A propagation is already running.")
            return None
        axis = self._axis() if axis is None else int(axis)
        label = int(c.active_label if label is None else label)
        keys = self.key_boxes(axis, label)
        if not keys:
            c.show_error(MedsamGuiError(
                f"Draw a box or a RECIST line for label {label} on at least one {AXIS_NAMES.get(axis, '')} slice "
                "first; propagation starts from those key slices."))
            return None
        use_model = self._segmenter is None
        if use_model and not self.ensure_engine("MedSAM's weights are needed to propagate."):
            c.status("Load MedSAM's weights, then propagate again.", 8000)
            return None
        if limits is None:
            limits = (int(self.from_spin.value()), int(self.to_spin.value()))
        margin = int(self.prop_margin_spin.value()) if margin is None else int(margin)
        shape = tuple(int(s) for s in c.orientation.display_shape(c.volume.shape))
        cancel = threading.Event()
        if use_model:
            if self.service.axis != axis:
                self.service.configure(c.volume, c.orientation, self._bounds(), axis, modality=c.volume.modality)
            service = self.service

            def segment(index: int, box) -> np.ndarray:
                return service.segment_blocking(index, box, cancel=cancel.is_set)

            prefetch = service.prefetch
        else:
            segmenter = self._segmenter

            def segment(index: int, box) -> np.ndarray:
                return np.asarray(segmenter(int(index), tuple(box)), dtype=bool)

            prefetch = None
        try:
            total = len(propagation.slices_to_encode(shape, keys, axis=axis, limits=limits))
            gen = propagation.propagate(shape, keys, segment, axis=axis, margin=margin, limits=limits,
                                        cancel=cancel.is_set, prefetch=prefetch)
        except MedsamGuiError as exc:
            c.show_error(exc)
            return None

        self.last_propagation = []
        self._prop_total = total
        self._prop_label = label
        self._prop_axis = axis
        self._prop_cancel = cancel
        self._prop_state = "running"
        group = c.edit_group()
        group.__enter__()
        self._prop_group = group
        if use_model:
            self.service.pause_background(True)
        if use_model and shape[axis] > 0:
            service.prefetch(list(keys)[:2])
        try:
            handle = c.run_worker(_guarded(gen), on_yield=self._on_prop_result, on_done=self._on_prop_done,
                                  on_error=self._on_prop_error,
                                  description=f"Propagating label {label} in 3D ({len(keys)} key slice"
                                              f"{'s' if len(keys) != 1 else ''})…")
        except BaseException:
            self._close_prop_group()
            raise
        self._prop_handle = handle
        handle.add_done_callback(lambda _h: self._close_prop_group())
        self.propagate_button.setEnabled(False)
        self.cancel_prop_button.setEnabled(True)
        self.prop_label.setText(f"Propagating from slices {', '.join(map(str, keys))}…")
        return handle

    def cancel_propagation(self) -> None:
        """Stop the running propagation; the slices already painted stay (one undo step)."""
        if self._prop_cancel is not None:
            self._prop_cancel.set()
        h = self._prop_handle
        if h is not None and not h.finished:
            self._prop_state = "cancelled"
            h.cancel()

    def _on_prop_result(self, res) -> None:
        c = self.controller
        if self._prop_group is None or c.volume is None:
            return
        c.write_slice_mask(self._prop_axis, res.index, res.mask, self._prop_label,
                           overwrite_other=self.overwrite_check.isChecked())
        self.last_propagation.append((int(res.index), res.kind, tuple(res.box)))
        n = len(self.last_propagation)
        h = self._prop_handle
        if h is not None:
            h.set_progress(n, max(n, self._prop_total))
        self.prop_label.setText(f"Slice {res.index} ({res.kind}): {n} slices done")
        self.slice_painted.emit(self._prop_axis, int(res.index))

    def _on_prop_done(self, result) -> None:
        if isinstance(result, _Failed):
            self._on_prop_error(result.exc)
            return
        self._prop_state = "done"

    def _on_prop_error(self, exc) -> None:
        self._prop_state = "failed"
        self.controller.show_error(exc, title="Propagation failed")

    def _close_prop_group(self) -> None:
        group, self._prop_group = self._prop_group, None
        if self._prop_cancel is not None:
            self._prop_cancel.set()
        if group is None:
            return
        try:
            group.__exit__(None, None, None)
        finally:
            self.service.pause_background(False)
            state = self._prop_state if self._prop_state in ("done", "cancelled", "failed") else "cancelled"
            self._prop_state = state
            n = len(self.last_propagation)
            idx = sorted(i for i, _k, _b in self.last_propagation)
            rng = f" (slices {idx[0]}–{idx[-1]})" if idx else ""
            text = {"done": f"Propagation finished: {n} slices{rng}. Edit > Undo removes it in one step.",
                    "cancelled": f"Propagation cancelled: {n} slices kept{rng}. Edit > Undo removes them.",
                    "failed": f"Propagation failed after {n} slices{rng}."}[state]
            self.prop_label.setText(text)
            self.controller.status(text, 8000)
            self.propagate_button.setEnabled(True)
            self.cancel_prop_button.setEnabled(False)
            self.propagation_finished.emit(state)

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        """Stop background threads (the window is closing)."""
        self.cancel_propagation()
        self.service.shutdown()


def install(controller, service: EmbeddingService | None = None):
    """Create the MedSAM and Measurements docks and the Models menu entries; returns the MedSAM
    panel (its Measurements panel is ``panel.measurements``).

    Called by ``medsam_gui.app.build_app``. Registers the panel's shutdown with the controller.
    """
    from .measurements_panel import MeasurementsPanel

    panel = MedSAMPanel(controller, service=service)
    medsam_dock = controller.add_dock(panel, "MedSAM", "right")
    measurements = MeasurementsPanel(controller)
    controller.add_dock(measurements, "Measurements", "right", tabify=True)
    panel.dock = medsam_dock
    if medsam_dock is not None:
        medsam_dock.raise_()
    panel.measurements = measurements
    window = controller.window
    if window is not None:
        window.add_action("models", "load_medsam_weights", "Load MedSAM weights…", panel.show_weights_dialog,
                          tip="Download MedSAM's weights or choose the medsam_vit_b.pth file")
        window.add_action("models", "export_measurements", "Export measurements (CSV)…", measurements.export_csv)
    controller.add_shutdown_hook(panel.shutdown)
    return panel
