"""MedSAM dock: the widgets of the box tool, the RECIST tool, background embedding, weights and
3D propagation, and :func:`install`.

Tools (the Shapes layer ``"prompts"``, :mod:`.prompt_layers`):

- **Box**: draw a rectangle on a slice; when it is finished the slice is segmented for the
  active label. Moving or resizing the box segments again (replacing that box's previous
  result).
- **RECIST line**: draw a line along the lesion's long axis; it becomes the square box
  ``core.prompts.recist_to_box(p0, p1, margin)`` (margin in the panel) and is segmented.

Each result is ONE undo step (:mod:`.slice_segmentation`). MedSAM input: the display slice of
the scan windowed with MedSAM's reference whole-volume windowing (CT: the window as displayed,
MR/unknown: the percentile auto window), embedded off the GUI thread by
:class:`~medsam_gui.gui.embedding_service.EmbeddingService` (the slice on screen first, then
its neighbours, optionally all slices; moving the slider re-prioritises).

3D propagation (``propagate``, :mod:`.propagation_run`), with a method choice (remembered in
the settings, key ``"prop_method"``):

- "Slice by slice (MedSAM)": the prompts of the active label on the current view's axis are
  the key boxes, each slice is segmented by MedSAM from the previous slice's mask;
- "MedSAM2 (memory)" (:mod:`.medsam2_run`): the box or RECIST line of the active label on the
  key slice (the current slice, or the nearest slice with a prompt) becomes the whole 3D
  lesion within the slice range, followed with MedSAM2's memory (its engine loaded off the GUI
  thread by ``medsam2_loader``, with a weights dialog when missing; it runs in a worker).

Either way each finished slice is written as it arrives, Cancel keeps what is done, the whole
run is ONE undo step that leaves the user's own edits made meanwhile alone, and the
measurements are refreshed when it ends.

The prompts are saved in sessions and autosave (state provider ``"medsam_prompts"``).

Scripting/tests: ``set_engine(engine)`` injects a MedSAMEngine; ``set_segmenter(fn)`` injects
any 2D box segmenter ``fn(index, box_xyxy) -> bool (H, W)`` for display slice
``np.take(display_volume, index, axis)`` (used instead of MedSAM by the tools and propagation);
``set_medsam2_engine(engine)`` injects a MedSAM2Engine (or any object with its
``segmentation`` method) for the MedSAM2 method.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import config
from ..errors import MedsamGuiError
from ..models.box_engines import BOX_ENGINES
from .collapsible import CollapsibleSection, dock_body
from .embedding_service import EmbeddingService
from .engine_choice import PanelEngineChoiceMixin
from .measurements_panel import MeasurementsPanel
from .medsam2_run import MedSAM2Loader
from .panel_propagation import PanelPropagationMixin
from .model_box import ModelBox
from .prompt_layers import PromptLayers
from .propagation_run import PropagationBox
from .slice_segmentation import SliceSegmentation

STATE_NAME = "medsam_prompts"
SETTINGS_KEY = "medsam_panel"
WINDOW_DEBOUNCE_MS = 500
DEFAULTS = {
    "recist_margin": 5.0,
    "prop_margin": 5,
    "overwrite_other": False,
    "precision": "auto",
    "device": "auto",
    "neighbours": 2,
    "prefetch_all": False,
    "prefetch_all_lite": True,  # LiteMedSAM embeds the whole scan in the background
    "engine": "",  # "" = the default (models.box_engines.default_box_engine)
    "background": True,
    # "slices" (MedSAM slice by slice), "medsam2" (MedSAM2 with memory) or "" (MedSAM2 when installed)
    "prop_method": "",
}


class MedSAMPanel(PanelEngineChoiceMixin, PanelPropagationMixin, QWidget):
    """The MedSAM dock widget (see the module docstring).

    Signals: ``slice_painted(axis, index)`` after a model result is written;
    ``propagation_finished(str)`` ("done", "cancelled" or "failed"); ``engine_changed(object)``.
    Attributes: ``service`` (EmbeddingService), ``prompts`` (PromptLayers), ``measurements``
    (the MeasurementsPanel it owns), ``segmentation`` (SliceSegmentation; ``timings``),
    ``engine_name`` (the chosen box engine: "medsam" or "litemedsam"), ``loaders`` (an
    EngineLoader per engine) and ``loader`` (the chosen one's), ``last_propagation`` (list of (index, kind, box) written by the
    last propagation).
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
        self._waiting_engine: list[int] = []
        self.last_propagation: list[tuple] = []
        self._auto_load_tried = False
        self.engine_name = self._initial_engine()
        self._build()
        self.prompts = PromptLayers(controller, self.recist_margin_spin.value, parent=self)
        self.segmentation = SliceSegmentation(controller, self.service, self.overwrite_check.isChecked,
                                              self._result_wanted, parent=self)
        self.loaders = self._make_loaders()
        self._medsam2_engine = None
        self._medsam2_pending: dict | None = None  # a MedSAM2 propagation waiting for its engine
        self.medsam2_loader = MedSAM2Loader(controller, self._dialog_parent,
                                            lambda: (self.model_box.device, self.model_box.precision), parent=self)
        self.measurements = MeasurementsPanel(controller)
        self._connect()
        if controller.volume is not None:  # made after the scan was shown (napari plugin)
            self._on_volume_changed(controller.volume)

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        """Always in view (top): the model state, the tools and "Propagate in 3D"; below, in a
        scroll area: the tools' settings, the propagation's settings and, folded, the model's."""
        s = self.settings
        actions = QWidget()
        al = QVBoxLayout(actions)
        al.setContentsMargins(2, 2, 2, 2)
        self.model_label = QLabel("MedSAM: weights not loaded")
        self.model_label.setWordWrap(True)
        self.embed_label = QLabel("")
        self.embed_label.setWordWrap(True)
        self.embed_label.setVisible(False)  # until there is an embedding to report
        al.addWidget(self.model_label)
        al.addWidget(self.embed_label)
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
        al.addLayout(row)
        self.propagation_box = PropagationBox(self.controller, int(s["prop_margin"]), method=self._initial_prop_method())
        al.addWidget(self.propagation_box.actions)

        settings = QWidget()
        layout = QVBoxLayout(settings)
        layout.setContentsMargins(2, 0, 2, 2)
        tools = QGroupBox("Segment a slice")
        tl = QVBoxLayout(tools)
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
        layout.addWidget(self.propagation_box)

        self.model_box = ModelBox(s, self._save, self.engine_name)
        mb = self.model_box
        self.precision_combo, self.device_combo, self.weights_button = mb.precision_combo, mb.device_combo, mb.weights_button
        self.background_check, self.neighbours_spin = mb.background_check, mb.neighbours_spin
        self.prefetch_all_check = mb.prefetch_all_check
        self.model_section = CollapsibleSection("Model, device and background embedding",
                                                settings_key="medsam_model_section_open")
        self.model_section.body_layout.addWidget(mb)
        layout.addWidget(self.model_section)
        layout.addStretch(1)
        self.settings_scroll = dock_body(self, actions, settings)

    def _connect(self) -> None:
        c = self.controller
        self.box_button.clicked.connect(lambda _=False: self.activate_box_tool())
        self.recist_button.clicked.connect(lambda _=False: self.activate_recist_tool())
        self.select_button.clicked.connect(lambda _=False: self.activate_select_tool())
        self.clear_button.clicked.connect(lambda _=False: self.clear_prompts())
        pb = self.propagation_box
        pb.propagate_button.clicked.connect(lambda _=False: self.propagate())
        pb.margin_spin.valueChanged.connect(lambda v: self._save("prop_margin", int(v)))
        for spin in (pb.from_spin, pb.to_spin):
            spin.valueChanged.connect(lambda _v: c.notify_state_changed())
        pb.slice_painted.connect(self.slice_painted)
        pb.finished.connect(self._on_propagation_finished)
        pb.method_changed.connect(lambda m: self._save("prop_method", str(m)))
        pb.medsam2_weights_button.clicked.connect(lambda _=False: self.show_medsam2_weights_dialog())
        ml = self.medsam2_loader
        ml.loading.connect(lambda name: c.status(f"Loading MedSAM2 from {name}…", 0))
        ml.loaded.connect(self.set_medsam2_engine)
        ml.failed.connect(lambda: setattr(self, "_medsam2_pending", None))
        self.weights_button.clicked.connect(lambda _=False: self.show_weights_dialog())
        self.recist_margin_spin.valueChanged.connect(lambda v: self._save("recist_margin", float(v)))
        self.recist_margin_spin.valueChanged.connect(lambda _v: self.prompts.update_recist_boxes())
        self.overwrite_check.toggled.connect(lambda v: self._save("overwrite_other", bool(v)))
        self.model_box.engine_settings_changed.connect(self._on_model_settings)
        self.model_box.engine_chosen.connect(self.choose_engine)
        self.model_box.embed_settings_changed.connect(
            lambda: self.service.apply_settings(**self.model_box.embed_settings()))

        self.prompts.drawing.connect(self._decode_ahead)
        self.prompts.drawn.connect(self._segment_pid)
        self.prompts.moved.connect(self._segment_pid)
        self.prompts.removed.connect(self.segmentation.keep_only)
        self.prompts.edited.connect(c.notify_state_changed)
        self.segmentation.painted.connect(self.slice_painted)

        c.volume_changed.connect(self._on_volume_changed)
        c.view_changed.connect(self._on_view_changed)
        c.window_changed.connect(self._on_window_changed)
        c.active_label_changed.connect(self.prompts.set_default_label)
        c.viewer.dims.events.current_step.connect(self._on_dims)
        self._window_timer = QTimer(self)
        self._window_timer.setSingleShot(True)
        self._window_timer.setInterval(WINDOW_DEBOUNCE_MS)
        self._window_timer.timeout.connect(self._reconfigure)

        sv = self.service
        sv.started.connect(self._on_embed_started)
        sv.done.connect(self._on_embed_done)
        sv.error.connect(self._on_embed_error)
        sv.waiting.connect(lambda _token, index: c.status(f"MedSAM: waiting for slice {index}'s embedding…", 0))
        # e.g. "The GPU ran out of memory: continuing on the CPU (slower)"
        sv.notice.connect(lambda msg: c.status(msg, 15000))

    def _save(self, key: str, value) -> None:
        self.settings[key] = value
        config.try_set_setting(SETTINGS_KEY, dict(self.settings))

    def _dialog_parent(self):
        window = self.controller.window
        return window.qt_window if window is not None else self

    # ------------------------------------------------------------------ engine / weights
    @property
    def engine(self):
        return self._engine

    @property
    def weights_dialog(self):
        return self.loader.dialog

    @property
    def timings(self) -> list[dict]:
        return self.segmentation.timings

    def set_engine(self, engine) -> None:
        """Use ``engine`` (a MedSAMEngine or LiteMedSAMEngine; None unloads). Starts background
        embedding (the whole scan for LiteMedSAM unless "Then all slices" is unticked)."""
        self._engine = engine
        name = getattr(engine, "name", None)
        if name in BOX_ENGINES and name != self.engine_name:  # injected (scripts, tests)
            self.engine_name = name
            self.model_box.show_engine(name)
            self.service.apply_settings(**self.model_box.embed_settings())
        self.service.set_engine(engine)
        self._reconfigure()
        if engine is not None:
            import torch

            self.model_box.fill_devices(gpu=torch.cuda.is_available())
            dev = getattr(engine, "device", "?")
            title = BOX_ENGINES[engine.name].title if getattr(engine, "name", None) in BOX_ENGINES else "MedSAM"
            self.model_label.setText(f"{title} ready on {dev} ({getattr(engine, 'precision', 'fp32')})")
            self._segment_waiting()
        else:
            self.model_label.setText(f"{self.loader.TITLE}: weights not loaded")
        self.engine_changed.emit(engine)

    def set_segmenter(self, fn: Callable | None) -> None:
        """Use ``fn(index, box_xyxy) -> bool (H, W)`` instead of MedSAM (None: back to MedSAM)."""
        self.segmentation.segmenter = fn
        if fn is not None:
            self.model_label.setText("Using an injected segmenter instead of MedSAM")
            self._segment_waiting()

    def _segment_waiting(self) -> None:
        pending, self._waiting_engine = self._waiting_engine, []
        for pid in pending:
            self._segment_pid(pid)

    def ensure_engine(self, reason: str = "") -> bool:
        """True when a segmenter is ready; otherwise starts loading MedSAM (or opens the
        weights dialog when no weights are found) and returns False."""
        if self._engine is not None or self.segmentation.segmenter is not None:
            return True
        self.loader.ensure(reason)
        return False

    def load_engine(self, path: str | Path | None = None):
        """Load MedSAM from ``path`` (default: the model manager's file) off the GUI thread."""
        return self.loader.load(path)

    def show_weights_dialog(self, reason: str = ""):
        """Open the weights dialog (non-blocking); accepted weights are loaded at once."""
        return self.loader.show_dialog(reason)

    def _on_model_settings(self) -> None:
        path = getattr(self._engine, "checkpoint_path", None)
        if self._engine is not None and path is not None:
            self.load_engine(path)
        path2 = getattr(self._medsam2_engine, "checkpoint_path", None)
        if path2 is not None and not self.propagating:
            self.load_medsam2(path2)  # MedSAM2 follows the device / precision too

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

    def _configure(self, axis: int) -> None:
        c = self.controller
        self.service.configure(c.volume, c.orientation, self._bounds(), axis, modality=c.volume.modality)

    def _reconfigure(self) -> None:
        if self.controller.volume is None:
            return
        axis = self._axis()
        self.service.set_focus(self._current_index(axis))
        self._configure(axis)

    def _on_volume_changed(self, _volume) -> None:
        self._medsam2_pending = None
        self.segmentation.reset()
        self.prompts.reset()
        self.propagation_box.update_limits()
        self._reconfigure()
        if self._engine is None and self.segmentation.segmenter is None and not self._auto_load_tried:
            self._auto_load_tried = True
            if self.loader.installed_weights() is not None:
                self.load_engine()

    def _on_view_changed(self, _view: str) -> None:
        # the embeddings stay on their axis: a prompt drawn in the new view switches them
        self.propagation_box.update_limits()
        self._update_embed_label()

    def _on_window_changed(self, _lo: float, _hi: float) -> None:
        if self.controller.volume is not None and self.controller.volume.modality == "CT":
            self._window_timer.start()

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

    # ------------------------------------------------------------------ embedding status
    def _update_embed_label(self) -> None:
        """The slice on screen's state and the whole-scan embedding progress."""
        sv = self.service
        if sv.engine is None or self.controller.volume is None or sv.axis is None:
            return
        try:
            idx = self.controller.current_slice(sv.axis)
        except Exception:
            return
        state = "ready" if sv.has_embedding(idx) else "not embedded yet"
        names = ("axial", "coronal", "sagittal")
        lines = [f"{names[sv.axis].capitalize()} slice {idx}: {state}"]
        progress = sv.embedding_progress()
        if progress is not None:
            lines.append(progress.describe())
        if sv.device_notice:
            lines.append(sv.device_notice)
        self.embed_label.setText("\n".join(lines))
        self.embed_label.setVisible(True)

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

    # ------------------------------------------------------------------ tools and prompts
    @property
    def prompts_layer(self):
        """The napari Shapes layer "prompts" (created on demand)."""
        return self.prompts.layer

    @property
    def recist_boxes_layer(self):
        return self.prompts.recist_boxes_layer

    def _activate(self, mode: str, button) -> None:
        c = self.controller
        if c.volume is None:
            button.setChecked(False)
            c.show_error("Open a scan first (File > Open scan…).")
            return
        self.prompts.activate(mode)
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
        """Remove all boxes and lines (the labels stay)."""
        self.prompts.clear()
        self.segmentation.reset()

    def key_boxes(self, axis: int | None = None, label: int | None = None) -> dict[int, tuple]:
        """{slice index: box} of the prompts of ``label`` (default: active) on display ``axis``
        (default: the current view's); several prompts on one slice give their union box."""
        axis = self._axis() if axis is None else int(axis)
        label = int(self.controller.active_label if label is None else label)
        return self.prompts.key_boxes(axis, label)

    def _result_wanted(self, token) -> bool:
        return not isinstance(token, int) or self.prompts.pid_index(token) is not None

    def _segment_pid(self, pid: int) -> None:
        i = self.prompts.pid_index(pid)
        if i is None:
            return
        try:
            axis, index, box, _kind, label = self.prompts.geometry(i)
        except MedsamGuiError as exc:
            self.controller.status(f"MedSAM: {exc}", 8000)
            return
        self.segment_box(axis, index, box, label, token=pid)

    def _decode_ahead(self, i: int) -> None:
        """Prompt ``i`` is being drawn: decode its box now (the decoder thread keeps the mask), so
        the mask is ready when the mouse is released there."""
        if self.segmentation.segmenter is not None or self._engine is None:
            return
        try:
            axis, index, box, _kind, _label = self.prompts.geometry(i)
        except MedsamGuiError:
            return
        if self.service.axis == axis:
            self.service.speculate(index, box)

    def segment_box(self, axis: int, index: int, box, label: int | None = None, *, token=None) -> None:
        """Segment ``box`` (x0, y0, x1, y1) on display slice ``index`` along display ``axis`` for
        ``label`` (default: active) and write the result as one undo step. Asynchronous with
        MedSAM (the result is painted when the decoder is done; ``slice_painted`` follows)."""
        c = self.controller
        label = int(c.active_label if label is None else label)
        token = token if token is not None else ("box", axis, index, tuple(box))
        if self.segmentation.segmenter is None:
            if self._engine is None:
                if isinstance(token, int) and token not in self._waiting_engine:
                    self._waiting_engine.append(token)
                self.ensure_engine()
                return
            if self.service.axis != axis:
                self._configure(axis)
        self.segmentation.segment(axis, index, box, label, token)

    # ------------------------------------------------------------------ session state, lifecycle
    def get_state(self) -> dict:
        """``{"shapes": ...}`` (``PromptLayers.get_state``: vertices in source (z, y, x) voxels) and
        the propagation's slice range (``PropagationBox.get_state``)."""
        return {**self.prompts.get_state(), **self.propagation_box.get_state()}

    def set_state(self, state: dict | None) -> None:
        self.prompts.set_state(state)
        self.propagation_box.set_state(state or {})

    def shutdown(self) -> None:
        """Stop background threads (the window is closing)."""
        self.cancel_propagation()
        self.service.shutdown()
        self.measurements.shutdown()


def install(controller, service: EmbeddingService | None = None) -> MedSAMPanel:
    """Create the MedSAM dock and its Measurements dock (``panel.measurements``), the Models menu
    entries (when there is a window), the "medsam_prompts" state provider and the shutdown hook;
    returns the MedSAM panel. ``service``: an EmbeddingService to use (tests, benchmarks)."""
    panel = MedSAMPanel(controller, service=service)
    dock = controller.add_dock(panel, "MedSAM", "right")
    controller.add_dock(panel.measurements, "Measurements", "right", tabify=True)
    if dock is not None:
        dock.raise_()
    controller.register_state_provider(STATE_NAME, panel.get_state, panel.set_state)
    controller.add_shutdown_hook(panel.shutdown)
    window = controller.window
    if window is not None:
        window.add_action("models", "load_medsam_weights", "Load MedSAM weights…",
                          lambda: panel.show_weights_dialog(),
                          tip="Download MedSAM's weights or choose the medsam_vit_b.pth file")
        window.add_action("models", "load_medsam2_weights", "Load MedSAM2 weights…",
                          lambda: panel.show_medsam2_weights_dialog(),
                          tip="Download MedSAM2's weights or choose a MedSAM2 .pt file (3D lesions with memory)")
        window.add_action("models", "export_measurements", "Export measurements (CSV)…",
                          lambda: panel.measurements.export_csv())
    return panel
