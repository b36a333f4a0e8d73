"""UniverSeg dock: segment the rest of a scan in context from a few labeled slices.

Workflow (everything in *display order*, slices along the current view's display axis
``controller.view_axis``; arrays are ``controller.display_volume()`` / ``display_labels()``):

1. **Support set** (the list with thumbnails). By default it follows the labeled slices of the
   active label: every display slice along the view axis where the label is drawn, windowed as
   displayed (``controller.window_bounds``) and scaled to [0, 1], resized to 128 x 128 (mask:
   binary, see :func:`medsam_gui.models.incontext.prepare_support`). "Add current slice" adds the
   slice on screen (also one without the label: a negative example), "Remove" drops the
   selected entries. "Keep support set" pins the list: a frozen copy that no longer follows the
   labels and survives opening another scan, so examples from one scan segment another.
   "Load example set…" / "Save example set…" read / write it as an example-set ``.npz``
   (:mod:`medsam_gui.core.example_sets`; ``axis`` and ``slice_indices`` are display axis and
   display indices). When the list holds more than S entries, an evenly spread subset of S is
   used (entries not used are greyed; ``ensemble`` > 1 averages several subsets).
2. **Targets**: the slices along the view axis from the first to the last labeled slice of the
   active label, extended to cover the "from"/"to" spin boxes ("Whole scan" sets them to the
   whole axis), without the slices where the label is drawn (the user's slices are never
   targets, so they are never changed). With no labeled slice (e.g. an example set on a new
   scan) the targets are exactly the spin-box range.
3. **Run**: ``controller.run_worker`` with :func:`~medsam_gui.models.incontext.iter_segment_rest`
   (batched; the progress bar here and in the status bar; Cancel stops before the next batch).
   Probabilities are resized back to the slice size; probability > 0.5 is the mask.
4. **Proposal**: results appear as they arrive in a separate napari Labels layer
   ``"UniverSeg proposal"`` (same scale, display order, drawn as contours) and in a list of
   proposed slices with check boxes. "Accept" writes the checked slices into the labels layer
   as ONE undo step (``controller.edit_group`` + ``write_slice_mask``): a slice where the label
   is drawn at that moment is skipped (user slices are never overwritten), other labels' voxels
   are kept unless "Overwrite other labels" is ticked. "Reject" discards everything. The layer
   is removed after either.
   **Cancel keeps the partial proposal**: the slices finished before Cancel stay proposed and
   can be accepted or rejected like a complete run (nothing is written without Accept).
5. **All labels**: every label drawn on this axis is segmented from its own labeled slices (as
   :func:`~medsam_gui.models.incontext.segment_rest_multi`, one label after the other in the
   same worker) and the proposals are combined without overlap: each pixel takes the label with
   the highest probability when that probability is > 0.5
   (:class:`~medsam_gui.models.incontext.MultiResult`). The support list is not used then.
6. **Fill from MedSAM boxes**: box 3–5 slices with the MedSAM panel, then click: the slices
   MedSAM segmented (the MedSAM panel's ``key_boxes`` of the active label on this axis, where
   the label is drawn) are the support; without such slices it is the labeled slices.

Weights: ``universeg_v1`` from the model manager (:mod:`medsam_gui.models.weights`); when they
are missing a dialog explains where to get ``universeg_v1_nf64_ss64_STA.pt`` and offers Download
(progress, cancellable) or Choose file… (validated, remembered). Scripts/tests inject a model
with :meth:`UniversegPanel.set_model`.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QSize, Qt, QTimer, Signal
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import config
from ..errors import CheckpointError, MedsamGuiError
from .workers import set_bar_value

log = logging.getLogger(__name__)

MODEL_NAME = "universeg_v1"
PROPOSAL_LAYER_NAME = "UniverSeg proposal"
SETTINGS_KEY = "universeg_panel"
EXAMPLE_SET_FILTER = "UniverSeg example sets (*.npz);;All files (*)"
THUMB = 48  # thumbnail size (pixels)
AXIS_NAMES = {0: "axial", 1: "coronal", 2: "sagittal"}
REFRESH_MS = 250
STATE_NAME = "universeg_support"


class UniversegPanelError(MedsamGuiError):
    """A UniverSeg action cannot run as asked (nothing to segment, no support ...)."""


# ----------------------------------------------------------------------------- file pickers
# module-level so tests replace them with monkeypatch

def ask_example_set_open_path(parent: QWidget | None) -> str | None:
    """File picker for an example set (.npz); returns the path or None."""
    start = config.get_setting("last_dir")
    path, _ = QFileDialog.getOpenFileName(parent, "Load UniverSeg example set",
                                          start if isinstance(start, str) else "", EXAMPLE_SET_FILTER)
    return path or None


def ask_example_set_save_path(parent: QWidget | None, suggested: str) -> str | None:
    """Save dialog for an example set; returns the path (``.npz`` appended if missing) or None."""
    start = config.get_setting("last_dir")
    start = str(Path(start) / suggested) if isinstance(start, str) else suggested
    path, _ = QFileDialog.getSaveFileName(parent, "Save UniverSeg example set", start, EXAMPLE_SET_FILTER)
    if not path:
        return None
    return path if path.lower().endswith(".npz") else path + ".npz"


def make_weights_dialog(parent: QWidget | None, reason: str = ""):
    """The generic weights dialog for ``universeg_v1`` (download or choose a file)."""
    from .weights_dialog import WeightsDialog

    return WeightsDialog(parent, model_name=MODEL_NAME, reason=reason)


# ----------------------------------------------------------------------------- support items


@dataclass(eq=False)
class SupportItem:
    """One support example: ``image`` float32 (128, 128) in [0, 1], ``mask`` uint8 (128, 128) 0/1.

    ``index``: display slice index along ``axis`` in its source scan; ``source``: scan name;
    ``origin``: "labels" (follows the labels), "added" (added by hand), "pinned" (frozen copy),
    "example set"; ``bounds``: the window (lo, hi) the image was taken with.
    """

    image: np.ndarray
    mask: np.ndarray
    index: int
    axis: int = 0
    source: str = ""
    origin: str = "labels"
    modality: str = "unknown"
    bounds: tuple[float, float] = (0.0, 1.0)
    thumbnail: np.ndarray | None = None  # uint8 (THUMB, THUMB, 3)
    key: Any = None  # cache key (live items)

    def frozen(self, origin: str = "pinned") -> "SupportItem":
        return SupportItem(self.image.copy(), self.mask.copy(), self.index, self.axis, self.source, origin,
                           self.modality, self.bounds, self.thumbnail, None)


def make_thumbnail(image: np.ndarray, mask: np.ndarray, color=(1.0, 0.4, 0.1),
                   size: int = THUMB) -> np.ndarray:
    """RGB uint8 (size, size, 3) thumbnail: the grey image (float [0, 1], (128, 128)) with the
    mask (0/1) as a translucent overlay and a solid outline in ``color`` (r, g, b floats 0..1)."""
    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask) > 0
    h, w = img.shape
    ys = (np.arange(size) * h // size).astype(int)
    xs = (np.arange(size) * w // size).astype(int)
    img = img[np.ix_(ys, xs)]
    m = m[np.ix_(ys, xs)]
    rgb = np.repeat(np.clip(img, 0, 1)[..., None] * 255.0, 3, axis=2)
    col = np.asarray(color[:3], dtype=np.float32) * 255.0
    rgb[m] = 0.55 * rgb[m] + 0.45 * col
    pad = np.pad(m, 1, constant_values=False)
    interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    edge = m & ~interior
    rgb[edge] = col
    return np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _icon(rgb: np.ndarray) -> QIcon:
    h, w, _ = rgb.shape
    qimg = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(qimg))


def _slice_index(ndim: int, axis: int, index: int) -> tuple:
    idx: list = [slice(None)] * ndim
    idx[axis] = int(index)
    return tuple(idx)


# ----------------------------------------------------------------------------- proposal


class Proposal:
    """A UniverSeg result waiting for Accept / Reject.

    ``results``: {label value: InContextResult} (display order along ``axis``); ``checked``:
    slices the user keeps (all by default); ``complete``: the run finished (False while it runs
    or after Cancel); ``volume``: the Volume it belongs to.
    """

    def __init__(self, volume, axis: int, results: dict, slice_shape: tuple[int, int]) -> None:
        self.volume = volume
        self.axis = int(axis)
        self.results = results
        self.slice_shape = tuple(slice_shape)
        self.unchecked: set[int] = set()
        self.complete = False
        self.cancelled = False
        self._counts: dict[int, list[tuple[int, int]]] = {}  # slice -> [(label, pixels)]

    @property
    def indices(self) -> list[int]:
        return sorted(set().union(*(r.probabilities for r in self.results.values()))) if self.results else []

    @property
    def planned(self) -> list[int]:
        return sorted(set().union(*(r.targets for r in self.results.values()))) if self.results else []

    def combined(self, index: int) -> np.ndarray:
        """(rows, cols) int64 label values proposed on slice ``index`` (0 = none)."""
        from ..models.incontext import MultiResult

        return MultiResult(self.results, axis=self.axis).combined(index)

    def checked(self) -> list[int]:
        return [i for i in self.indices if i not in self.unchecked]

    def counts(self, index: int, combined: np.ndarray | None = None) -> list[tuple[int, int]]:
        """[(label value, proposed pixels)] on slice ``index``, kept until :meth:`changed`
        (the proposal list shows them for every slice after every batch: without the cache the
        GUI thread recomputed all earlier slices each time). ``combined``: the slice's
        :meth:`combined` when the caller has it."""
        c = self._counts.get(int(index))
        if c is None:
            comb = self.combined(index) if combined is None else combined
            c = [(int(v), int(np.count_nonzero(comb == v))) for v in self.results]
            self._counts[int(index)] = c
        return c

    def changed(self, indices) -> None:
        """New results arrived for these slices: forget their cached counts."""
        for i in indices:
            self._counts.pop(int(i), None)


# ----------------------------------------------------------------------------- the panel


class UniversegPanel(QWidget):
    """The "UniverSeg" dock (see the module docstring).

    Signals: ``support_changed()`` (the support list was rebuilt), ``proposal_changed()``
    (slices arrived, were checked/unchecked, accepted or rejected), ``run_finished(str)``
    ("done", "cancelled" or "error").

    Scripting/tests: :meth:`set_model`, :meth:`segment_rest`, :meth:`fill_from_medsam`,
    :meth:`cancel`, :meth:`accept`, :meth:`reject`, :meth:`support_items`,
    :meth:`proposal_slices`, :meth:`set_slice_checked`, :meth:`planned_targets`,
    :meth:`save_example_set`, :meth:`load_example_set`, :attr:`proposal_layer`, :attr:`running`.
    """

    support_changed = Signal()
    proposal_changed = Signal()
    run_finished = Signal(str)
    notice = Signal(str)  # emitted from worker threads (GPU out of memory); shown in the status bar

    def __init__(self, controller, parent: QWidget | None = None, *, medsam=None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.medsam = medsam  # the MedSAM panel (its key boxes), or None
        self._model = None
        self._model_path: Path | None = None
        self._items: list[SupportItem] = []
        self._cache: dict[Any, SupportItem] = {}
        self._excluded: set[int] = set()
        self._added: set[int] = set()
        self._proposal: Proposal | None = None
        self._layer = None
        self._handle = None
        self._pending = None  # action to run once weights are available
        self._range_user_set = False
        self._weights_dialog = None
        self._was_pinned = False
        self.last_run: dict = {}
        self.last_notice = ""  # the last out-of-memory fallback message shown
        saved = config.get_setting(SETTINGS_KEY, {})
        self.settings = saved if isinstance(saved, dict) else {}
        self._build()
        self._connect()
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self.refresh_support)
        if controller.volume is not None:
            self._on_volume_changed(controller.volume)
        else:
            self._update_buttons()

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        self.intro = QLabel("Label a structure on a few slices (brush or MedSAM), then let UniverSeg "
                            "segment the slices in between. You review the result before it is written.")
        self.intro.setWordWrap(True)
        layout.addWidget(self.intro)

        # --- support set
        sup = QGroupBox("Support set (examples)")
        sl = QVBoxLayout(sup)
        self.support_label = QLabel("")
        self.support_label.setWordWrap(True)
        sl.addWidget(self.support_label)
        self.support_list = QListWidget()
        self.support_list.setIconSize(QSize(THUMB, THUMB))
        self.support_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.support_list.setMinimumHeight(120)
        self.support_list.setToolTip("The examples UniverSeg learns from: slice image with its mask outline. "
                                     "Double-click to go to the slice (examples of this scan).")
        sl.addWidget(self.support_list)
        row = QHBoxLayout()
        self.add_button = QPushButton("Add current slice")
        self.add_button.setToolTip("Add the slice on screen (with its mask of the active label; a slice "
                                   "without the label is a negative example).")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Leave the selected examples out of the support set.")
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        sl.addLayout(row)
        self.pin_check = QCheckBox("Keep support set (pin)")
        self.pin_check.setToolTip("Freeze the examples: they stop following the labels and stay when you "
                                  "open another scan, so one scan's examples segment another.")
        sl.addWidget(self.pin_check)
        row = QHBoxLayout()
        self.load_set_button = QPushButton("Load example set…")
        self.save_set_button = QPushButton("Save example set…")
        row.addWidget(self.load_set_button)
        row.addWidget(self.save_set_button)
        sl.addLayout(row)
        layout.addWidget(sup)

        # --- targets
        tg = QGroupBox("Slices to segment")
        tl = QFormLayout(tg)
        row = QHBoxLayout()
        self.from_spin = QSpinBox()
        self.to_spin = QSpinBox()
        for s in (self.from_spin, self.to_spin):
            s.setRange(0, 0)
            s.setToolTip("The range always covers the labeled slices of the label; extend it here.")
        row.addWidget(QLabel("from"))
        row.addWidget(self.from_spin)
        row.addWidget(QLabel("to"))
        row.addWidget(self.to_spin)
        self.whole_button = QPushButton("Whole scan")
        self.whole_button.setToolTip("Extend the range to every slice of the scan along this view.")
        row.addWidget(self.whole_button)
        tl.addRow(row)
        self.targets_label = QLabel("")
        self.targets_label.setWordWrap(True)
        tl.addRow(self.targets_label)
        self.all_labels_check = QCheckBox("All labels (each from its own labeled slices; no overlap)")
        tl.addRow(self.all_labels_check)
        self.overwrite_check = QCheckBox("Overwrite other labels")
        self.overwrite_check.setToolTip("Off: accepted masks never replace voxels of other labels.")
        tl.addRow(self.overwrite_check)
        layout.addWidget(tg)

        # --- run
        run = QGroupBox("Run")
        rl = QFormLayout(run)
        self.support_size_spin = QSpinBox()
        self.support_size_spin.setRange(0, 128)
        self.support_size_spin.setSpecialValueText("auto (16 CPU / 64 GPU)")
        self.support_size_spin.setValue(int(self.settings.get("support_size", 0) or 0))
        self.support_size_spin.setToolTip("Support size S: at most S examples per run (evenly spread).")
        rl.addRow("Support size S", self.support_size_spin)
        self.ensemble_spin = QSpinBox()
        self.ensemble_spin.setRange(1, 8)
        self.ensemble_spin.setValue(int(self.settings.get("ensemble", 1) or 1))
        self.ensemble_spin.setToolTip("Average the results of this many different support subsets.")
        rl.addRow("Ensemble", self.ensemble_spin)
        self.device_combo = QComboBox()
        self._fill_devices()
        rl.addRow("Device", self.device_combo)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 64)
        self.batch_spin.setSpecialValueText("auto")
        self.batch_spin.setValue(int(self.settings.get("batch_size", 0) or 0))
        self.batch_spin.setToolTip("Target slices per model call (auto: from a memory budget).")
        rl.addRow("Batch", self.batch_spin)
        self.segment_button = QPushButton("Segment the rest")
        self.segment_button.setToolTip("Segment the unlabeled slices of the active label in the range, "
                                       "using the support set above. The result is a proposal to review.")
        rl.addRow(self.segment_button)
        self.medsam_button = QPushButton("Fill from MedSAM boxes")
        self.medsam_button.setToolTip(
            "One click from MedSAM to a full 3D mask: box the structure on 3–5 slices spread over it "
            "with the MedSAM panel, then click here. The MedSAM-segmented slices are the examples and "
            "UniverSeg proposes the slices in between.")
        rl.addRow(self.medsam_button)
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop after the current batch; the finished slices stay proposed.")
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        rl.addRow(row)
        self.weights_button = QPushButton("UniverSeg weights…")
        rl.addRow(self.weights_button)
        layout.addWidget(run)

        # --- proposal
        pr = QGroupBox("Proposal")
        pl = QVBoxLayout(pr)
        self.proposal_label = QLabel("No proposal.")
        self.proposal_label.setWordWrap(True)
        pl.addWidget(self.proposal_label)
        self.proposal_list = QListWidget()
        self.proposal_list.setMinimumHeight(100)
        self.proposal_list.setToolTip("Untick the slices you do not want; click a slice to go to it.")
        pl.addWidget(self.proposal_list)
        row = QHBoxLayout()
        self.check_all_button = QPushButton("All")
        self.check_none_button = QPushButton("None")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Write the ticked slices into the labels (one undo step).")
        self.reject_button = QPushButton("Reject")
        self.reject_button.setToolTip("Discard the whole proposal.")
        for b in (self.check_all_button, self.check_none_button, self.accept_button, self.reject_button):
            row.addWidget(b)
        pl.addLayout(row)
        layout.addWidget(pr)
        layout.addStretch(1)

    def _fill_devices(self) -> None:
        # "cuda" is always offered (probing CUDA would import torch at startup); choosing it
        # without a GPU shows InContextError's message when a run starts
        choices = ["auto", "cpu", "cuda"]
        want = str(self.settings.get("device", "auto"))
        self.device_combo.addItems(choices)
        self.device_combo.setCurrentText(want if want in choices else "auto")
        self.device_combo.setToolTip("auto: the GPU when there is one, else the CPU; cuda: an NVIDIA GPU.")

    def _connect(self) -> None:
        c = self.controller
        self.notice.connect(self._on_notice)  # queued: emitted from worker threads
        c.volume_changed.connect(self._on_volume_changed)
        c.labels_changed.connect(self._schedule_refresh)
        c.active_label_changed.connect(self._on_active_label)
        c.window_changed.connect(lambda _lo, _hi: self._schedule_refresh())
        if hasattr(c, "view_changed"):
            c.view_changed.connect(self._on_view_changed)
        if hasattr(c, "label_table_changed"):
            c.label_table_changed.connect(self._on_table_changed)
        self.add_button.clicked.connect(lambda _=False: self.add_current_slice())
        self.remove_button.clicked.connect(lambda _=False: self.remove_selected())
        self.pin_check.toggled.connect(self._on_pin_toggled)
        self.load_set_button.clicked.connect(lambda _=False: self.load_example_set())
        self.save_set_button.clicked.connect(lambda _=False: self.save_example_set())
        self.support_list.itemDoubleClicked.connect(self._on_support_double_clicked)
        self.from_spin.valueChanged.connect(self._on_range_edited)
        self.to_spin.valueChanged.connect(self._on_range_edited)
        self.whole_button.clicked.connect(lambda _=False: self.extend_to_whole_scan())
        self.all_labels_check.toggled.connect(lambda _v: self._update_targets_label())
        self.support_size_spin.valueChanged.connect(lambda v: self._save("support_size", int(v)))
        self.support_size_spin.valueChanged.connect(lambda _v: self._rebuild_support_list())
        self.ensemble_spin.valueChanged.connect(lambda v: self._save("ensemble", int(v)))
        self.ensemble_spin.valueChanged.connect(lambda _v: self._rebuild_support_list())
        self.batch_spin.valueChanged.connect(lambda v: self._save("batch_size", int(v)))
        self.device_combo.currentTextChanged.connect(lambda t: self._save("device", t))
        self.segment_button.clicked.connect(lambda _=False: self.segment_rest())
        self.medsam_button.clicked.connect(lambda _=False: self.fill_from_medsam())
        self.cancel_button.clicked.connect(lambda _=False: self.cancel())
        self.weights_button.clicked.connect(lambda _=False: self.show_weights_dialog())
        self.proposal_list.itemChanged.connect(self._on_proposal_item_changed)
        self.proposal_list.itemClicked.connect(self._on_proposal_item_clicked)
        self.check_all_button.clicked.connect(lambda _=False: self._check_all(True))
        self.check_none_button.clicked.connect(lambda _=False: self._check_all(False))
        self.accept_button.clicked.connect(lambda _=False: self.accept())
        self.reject_button.clicked.connect(lambda _=False: self.reject())

    def _save(self, key: str, value) -> None:
        self.settings[key] = value
        config.try_set_setting(SETTINGS_KEY, dict(self.settings))

    # ------------------------------------------------------------------ model
    @property
    def model(self):
        return self._model

    def set_model(self, module) -> None:
        """Use ``module`` (a UniverSeg v1 ``nn.Module``, or any module with the same call
        signature) instead of loading the weights from the model manager."""
        self._model = module
        self._model_path = None

    def load_model(self, path: str | Path | None = None):
        """Load UniverSeg v1 from ``path`` or the model manager's ``universeg_v1`` file (GUI thread,
        ~5 MiB). Returns the module; raises CheckpointError when the weights are missing/invalid."""
        from ..models.universeg import universeg_v1

        if path is None:
            from ..models import weights as manager

            path = manager.resolve(MODEL_NAME)
            if path is None:
                raise CheckpointError("UniverSeg weights (universeg_v1_nf64_ss64_STA.pt) are not installed.")
        self._model = universeg_v1(Path(path))
        self._model_path = Path(path)
        return self._model

    def ensure_model(self, pending=None) -> bool:
        """True when a model is ready; otherwise tries the model manager's file, and when that
        fails opens the weights dialog (``pending`` runs once the weights are in)."""
        if self._model is not None:
            return True
        try:
            self.load_model()
            return True
        except CheckpointError as exc:
            reason = str(exc) if "not installed" not in str(exc) else \
                "UniverSeg needs its weights file before it can segment."
        self._pending = pending
        self.show_weights_dialog(reason)
        return False

    def show_weights_dialog(self, reason: str = ""):
        """Open the UniverSeg weights dialog (non-blocking); returns it."""
        if self._weights_dialog is not None:
            try:
                if self._weights_dialog.isVisible():
                    return self._weights_dialog
            except RuntimeError:
                pass
        dlg = make_weights_dialog(self, reason)
        dlg.weights_ready.connect(self._on_weights_ready)
        dlg.rejected.connect(lambda: setattr(self, "_pending", None))
        self._weights_dialog = dlg
        dlg.open()
        return dlg

    @property
    def weights_dialog(self):
        return self._weights_dialog

    def _on_weights_ready(self, path) -> None:
        try:
            self.load_model(path)
        except MedsamGuiError as exc:
            self.controller.show_error(exc, title="Could not load the UniverSeg weights")
            return
        self.controller.status(f"UniverSeg weights: {path}", 6000)
        pending, self._pending = self._pending, None
        if pending is not None:
            QTimer.singleShot(0, pending)

    # ------------------------------------------------------------------ geometry helpers
    def _axis(self) -> int:
        return int(getattr(self.controller, "view_axis", 0))

    def _n_slices(self, axis: int | None = None) -> int:
        c = self.controller
        if c.volume is None:
            return 0
        axis = self._axis() if axis is None else axis
        return int(c.display_labels().shape[axis])

    def _bounds(self) -> tuple[float, float]:
        b = self.controller.window_bounds
        if b is None or not b[1] > b[0]:
            return (0.0, 1.0)
        return (float(b[0]), float(b[1]))

    def _scan_name(self) -> str:
        v = self.controller.volume
        if v is None:
            return ""
        return str(v.name or (Path(v.path).name if getattr(v, "path", None) else "scan"))

    def _label_color(self, value: int):
        info = self.controller.label_table.get(int(value))
        return info.color[:3] if info is not None else (1.0, 0.4, 0.1)

    def labeled(self, label: int | None = None, axis: int | None = None) -> list[int]:
        """Display slice indices along ``axis`` (default: view axis) where ``label`` (default:
        active) is drawn."""
        from ..models.incontext import labeled_slices

        c = self.controller
        if c.volume is None:
            return []
        axis = self._axis() if axis is None else axis
        label = c.active_label if label is None else label
        return labeled_slices(c.display_labels(), int(label), axis)

    # ------------------------------------------------------------------ support set
    def _make_item(self, index: int, axis: int, label: int, bounds, origin: str = "labels") -> SupportItem:
        from ..models.incontext import prepare_support

        c = self.controller
        img = np.take(c.display_volume(), int(index), axis=axis)
        mask = np.take(c.display_labels(), int(index), axis=axis) == int(label)
        key = (id(c.volume), axis, int(index), int(label), bounds, hash(np.packbits(mask).tobytes()))
        cached = self._cache.get(key)
        if cached is not None:
            item = cached
        else:
            prepared = prepare_support(img[None], mask[None], bounds, indices=[int(index)])
            item = SupportItem(prepared.images[0], prepared.masks[0], int(index), axis, self._scan_name(), origin,
                               c.volume.modality, bounds, None, key)
            item.thumbnail = make_thumbnail(item.image, item.mask, self._label_color(label))
            self._cache[key] = item
        if item.origin != origin:
            item = SupportItem(item.image, item.mask, item.index, axis, item.source, origin, item.modality,
                               item.bounds, item.thumbnail, key)
        return item

    def _schedule_refresh(self) -> None:
        if not self.pin_check.isChecked():
            self._refresh_timer.start()
        else:
            self._update_targets_label()

    def refresh_support(self) -> None:
        """Rebuild the support list from the labels (unless pinned) and the target range."""
        self._refresh_timer.stop()
        c = self.controller
        if not self.pin_check.isChecked():
            if c.volume is None:
                self._items = []
            else:
                axis, label, bounds = self._axis(), int(c.active_label), self._bounds()
                labeled = set(self.labeled(label, axis))
                wanted = sorted((labeled - self._excluded) | self._added)
                self._items = [self._make_item(i, axis, label, bounds, "labels" if i in labeled else "added")
                               for i in wanted]
                live = {it.key for it in self._items}
                if len(self._cache) > 4 * max(16, len(live)):
                    self._cache = {k: v for k, v in self._cache.items() if k in live}
        self._update_range_defaults()
        self._rebuild_support_list()

    def _used_positions(self) -> set[int]:
        from ..models.incontext import DEFAULT_SUPPORT_SIZE_CPU, DEFAULT_SUPPORT_SIZE_GPU, choose_support_subsets

        n = len(self._items)
        if not n:
            return set()
        S = self.support_size_spin.value()
        if S <= 0:
            dev = self.device_combo.currentText()
            torch = sys.modules.get("torch")
            gpu = dev == "cuda" or (dev == "auto" and torch is not None and torch.cuda.is_available())
            key, default = (("universeg_support_size_gpu", DEFAULT_SUPPORT_SIZE_GPU) if gpu else
                            ("universeg_support_size_cpu", DEFAULT_SUPPORT_SIZE_CPU))
            try:
                S = max(1, int(config.get_setting(key, default)))
            except (TypeError, ValueError):
                S = default
        return set().union(*map(set, choose_support_subsets(range(n), S, self.ensemble_spin.value())))

    def _rebuild_support_list(self) -> None:
        used = self._used_positions()
        lst = self.support_list
        lst.clear()
        for pos, it in enumerate(self._items):
            text = f"slice {it.index}" + (f" · {it.source}" if it.source and it.source != self._scan_name()
                                          or it.origin in ("pinned", "example set") else "")
            if not it.mask.any():
                text += " · negative"
            if it.origin == "added":
                text += " · added"
            if pos not in used:
                text += " · not used (S)"
            item = QListWidgetItem(_icon(it.thumbnail), text)
            item.setData(Qt.ItemDataRole.UserRole, pos)
            item.setToolTip(f"{AXIS_NAMES.get(it.axis, it.axis)} slice {it.index} of {it.source or 'scan'} "
                            f"({it.origin}); window {it.bounds[0]:g}..{it.bounds[1]:g}; "
                            f"{int(it.mask.sum())} of 128×128 pixels in the mask")
            if pos not in used:
                item.setForeground(Qt.GlobalColor.gray)
            lst.addItem(item)
        n = len(self._items)
        pinned = self.pin_check.isChecked()
        if n == 0:
            self.support_label.setText("No examples yet: draw the active label on a few slices (or load an "
                                       "example set).")
        else:
            src = "pinned" if pinned else f"labeled {AXIS_NAMES.get(self._axis(), '')} slices of the active label"
            self.support_label.setText(f"{n} example{'s' if n != 1 else ''} ({src}); {len(used)} used per run.")
        self._update_targets_label()
        self._update_buttons()
        if pinned or self._was_pinned:
            self._mark_dirty()
        self._was_pinned = pinned
        self.support_changed.emit()

    def support_items(self) -> list[SupportItem]:
        """The support list as shown (a copy of the list; items are shared)."""
        return list(self._items)

    def support_slices(self) -> list[int]:
        """Slice index of every support entry, in list order."""
        return [it.index for it in self._items]

    def thumbnail_icons(self) -> list[QIcon]:
        return [self.support_list.item(r).icon() for r in range(self.support_list.count())]

    def add_current_slice(self) -> None:
        """Add the slice on screen (current view axis) with its mask of the active label."""
        c = self.controller
        if c.volume is None:
            return
        axis = self._axis()
        i = c.current_slice(axis)
        if self.pin_check.isChecked():
            if any(it.index == i and it.source == self._scan_name() and it.axis == axis for it in self._items):
                c.status(f"Slice {i} is already in the support set.")
                return
            item = self._make_item(i, axis, int(c.active_label), self._bounds(), "added").frozen("added")
            self._items.append(item)
            self._rebuild_support_list()
        else:
            if i in self._excluded:
                self._excluded.discard(i)
            else:
                self._added.add(i)
            self.refresh_support()
        if not np.any(np.take(c.display_labels(), i, axis=axis) == int(c.active_label)):
            c.status(f"Slice {i} has no voxel of the active label: it is a negative example.", 6000)

    def remove_selected(self) -> None:
        """Drop the selected support entries."""
        rows = sorted({self.support_list.row(it) for it in self.support_list.selectedItems()}, reverse=True)
        if not rows:
            self.controller.status("Select the examples to remove in the support list first.")
            return
        if self.pin_check.isChecked():
            for r in rows:
                del self._items[r]
            self._rebuild_support_list()
            return
        for r in rows:
            i = self._items[r].index
            if i in self._added:
                self._added.discard(i)
            else:
                self._excluded.add(i)
        self.refresh_support()

    def _on_pin_toggled(self, on: bool) -> None:
        if on:
            self._items = [it.frozen("pinned" if it.origin == "labels" else it.origin) for it in self._items]
            self._rebuild_support_list()
        else:
            self._excluded.clear()
            self._added.clear()
            self.refresh_support()

    def set_pinned(self, on: bool) -> None:
        self.pin_check.setChecked(bool(on))

    def _on_support_double_clicked(self, item) -> None:
        pos = item.data(Qt.ItemDataRole.UserRole)
        it = self._items[int(pos)] if pos is not None and int(pos) < len(self._items) else None
        c = self.controller
        if it is None or c.volume is None or it.source != self._scan_name() or it.axis != self._axis():
            return
        c.set_current_slice(it.axis, it.index)

    def _set_items(self, items: list[SupportItem]) -> None:
        self.pin_check.blockSignals(True)
        self.pin_check.setChecked(True)
        self.pin_check.blockSignals(False)
        self._items = list(items)
        self._rebuild_support_list()

    def support_set(self, items: list[SupportItem] | None = None):
        """The :class:`~medsam_gui.models.incontext.SupportSet` of ``items`` (default: the list)."""
        from ..models.incontext import SupportSet

        items = self._items if items is None else items
        if not items:
            raise UniversegPanelError("The support set is empty: draw the active label on a few slices of "
                                      "this view (or load an example set) first.")
        mods = {it.modality for it in items}
        return SupportSet(np.stack([it.image for it in items]), np.stack([it.mask for it in items]),
                          tuple(range(len(items))), tuple(items[0].bounds),
                          mods.pop() if len(mods) == 1 else "unknown",
                          ", ".join(dict.fromkeys(it.source for it in items)))

    # ------------------------------------------------------------------ example sets
    def save_example_set(self, path: str | Path | None = None) -> Path | None:
        """Save the support list as an example set (.npz); ``path`` None asks. Returns the path."""
        from ..core.example_sets import ExampleSet, save_example_set

        c = self.controller
        if not self._items:
            c.show_error(UniversegPanelError("There is no example to save: the support set is empty."))
            return None
        label = int(c.active_label)
        info = c.label_table.get(label)
        name = info.name if info is not None else f"label {label}"
        if path is None:
            suggested = f"{name.replace(' ', '_')}_examples.npz"
            path = ask_example_set_save_path(self, suggested)
            if not path:
                return None
        items = self._items
        mods = {it.modality for it in items}
        es = ExampleSet(images=np.stack([it.image for it in items]), masks=np.stack([it.mask for it in items]),
                        label_name=name, label_value=label, modality=mods.pop() if len(mods) == 1 else "unknown",
                        window_bounds=tuple(items[0].bounds),
                        source_scan=", ".join(dict.fromkeys(it.source for it in items)),
                        slice_indices=tuple(it.index for it in items), axis=int(items[0].axis))
        try:
            written = save_example_set(path, es)
        except MedsamGuiError as exc:
            c.show_error(exc, title="Could not save the example set")
            return None
        try:
            config.set_setting("last_dir", str(Path(written).parent))
        except OSError:
            pass
        c.status(f"Saved {len(es)} examples of “{name}” to {written}", 8000)
        return Path(written)

    def load_example_set(self, path: str | Path | None = None) -> bool:
        """Replace the support list by a saved example set (and pin it); ``path`` None asks."""
        from ..core.example_sets import load_example_set

        c = self.controller
        if path is None:
            path = ask_example_set_open_path(self)
            if not path:
                return False
        try:
            es = load_example_set(path)
        except MedsamGuiError as exc:
            c.show_error(exc, title="Could not load the example set")
            return False
        color = self._label_color(int(c.active_label))
        src = es.source_scan or Path(path).name
        items = []
        for k in range(len(es)):
            img = np.asarray(es.images[k], dtype=np.float32)
            mask = (np.asarray(es.masks[k]) > 0).astype(np.uint8)
            items.append(SupportItem(img, mask, int(es.slice_indices[k]), int(es.axis), src, "example set",
                                     es.modality, tuple(es.window_bounds), make_thumbnail(img, mask, color)))
        self._set_items(items)
        try:
            config.set_setting("last_dir", str(Path(path).parent))
        except OSError:
            pass
        c.status(f"Loaded {len(es)} examples of “{es.label_name}” ({es.modality}) from {Path(path).name}; "
                 "they segment the active label.", 8000)
        if es.axis != self._axis():
            c.status(f"Note: the example set holds {AXIS_NAMES.get(es.axis, es.axis)} slices; this view is "
                     f"{AXIS_NAMES.get(self._axis(), self._axis())}.", 8000)
        if c.volume is not None and es.modality not in ("unknown", c.volume.modality):
            c.status(f"Note: the example set is {es.modality}, this scan is {c.volume.modality}.", 8000)
        return True

    # ------------------------------------------------------------------ session state
    def get_state(self) -> dict:
        """State for sessions/autosave (``medsam_gui.gui.session`` conventions): ``{"pinned": bool}``
        and, when pinned, ``"support_sets": {label: {"images" float32 (S,128,128), "labels" uint8
        (S,128,128), "indices" int64 (S,), "axes" int64 (S,), "bounds" float64 (S,2)}}`` (label =
        the active label) plus the lists ``sources``, ``origins``, ``modalities``. An unpinned list
        follows the labels, so nothing else is stored then."""
        if not self.pin_check.isChecked() or not self._items:
            return {"pinned": False}
        items = self._items
        label = max(1, int(self.controller.active_label))
        return {
            "pinned": True,
            "label": label,
            "support_sets": {label: {
                "images": np.stack([it.image for it in items]).astype(np.float32),
                "labels": np.stack([it.mask for it in items]).astype(np.uint8),
                "indices": np.asarray([it.index for it in items], dtype=np.int64),
                "axes": np.asarray([it.axis for it in items], dtype=np.int64),
                "bounds": np.asarray([it.bounds for it in items], dtype=np.float64).reshape(-1, 2),
            }},
            "sources": [it.source for it in items],
            "origins": [it.origin for it in items],
            "modalities": [it.modality for it in items],
        }

    def set_state(self, state: dict | None) -> None:
        """Restore what :meth:`get_state` returned (not pinned / empty: follow the labels)."""
        sets = (state or {}).get("support_sets") or {}
        if not (state or {}).get("pinned") or not sets:
            self.pin_check.setChecked(False)
            return
        key = state.get("label")
        d = sets.get(key, sets.get(str(key))) if key is not None else None
        if d is None:
            d = next(iter(sets.values()))
        images = np.asarray(d["images"], dtype=np.float32)
        masks = (np.asarray(d["labels"]) > 0).astype(np.uint8)
        n = len(images)
        idx = np.asarray(d.get("indices", np.arange(n))).astype(int)
        axes = np.asarray(d.get("axes", np.zeros(n))).astype(int)
        bounds = np.asarray(d.get("bounds", np.tile([0.0, 1.0], (n, 1))), dtype=float).reshape(-1, 2)
        sources = list(state.get("sources") or [""] * n)
        origins = list(state.get("origins") or ["pinned"] * n)
        mods = list(state.get("modalities") or ["unknown"] * n)
        color = self._label_color(int(self.controller.active_label))
        items = [SupportItem(images[k], masks[k], int(idx[k]), int(axes[k]), str(sources[k]), str(origins[k]),
                             str(mods[k]), (float(bounds[k][0]), float(bounds[k][1])),
                             make_thumbnail(images[k], masks[k], color)) for k in range(n)]
        self._set_items(items)

    def _mark_dirty(self) -> None:
        """Tell the session autosave that the (pinned) support set changed."""
        self.controller.notify_state_changed()

    # ------------------------------------------------------------------ targets
    def _update_range_defaults(self) -> None:
        n = self._n_slices()
        for s in (self.from_spin, self.to_spin):
            s.blockSignals(True)
            s.setRange(0, max(0, n - 1))
        if not self._range_user_set:
            lab = self.labeled()
            lo, hi = (lab[0], lab[-1]) if lab else (0, max(0, n - 1))
            self.from_spin.setValue(lo)
            self.to_spin.setValue(hi)
        for s in (self.from_spin, self.to_spin):
            s.blockSignals(False)

    def _on_range_edited(self, _v=None) -> None:
        self._range_user_set = True
        self._update_targets_label()

    def set_range(self, lo: int, hi: int) -> None:
        """Extend the targets to display slices ``lo``..``hi`` (inclusive) along the view axis."""
        self._range_user_set = True
        for s, v in ((self.from_spin, lo), (self.to_spin, hi)):
            s.blockSignals(True)
            s.setValue(int(v))
            s.blockSignals(False)
        self._update_targets_label()

    def extend_to_whole_scan(self) -> None:
        n = self._n_slices()
        if n:
            self.set_range(0, n - 1)

    def z_range(self) -> tuple[int, int]:
        a, b = self.from_spin.value(), self.to_spin.value()
        return (min(a, b), max(a, b))

    def planned_targets(self, label: int | None = None) -> list[int]:
        """Target slices (display indices along the view axis) a run for ``label`` (default:
        active) would segment: the labeled range extended to the spin boxes, minus labeled slices."""
        from ..models.incontext import plan_targets

        if self.controller.volume is None:
            return []
        return plan_targets(self._n_slices(), self.labeled(label), z_range=self.z_range())

    def _labels_present(self, axis: int) -> list[int]:
        """Label values (>= 1) drawn anywhere in the labels (sorted)."""
        c = self.controller
        if c.volume is None:
            return []
        data = np.asarray(c.display_labels())
        if data.size == 0:
            return []
        counts = np.bincount(data.reshape(-1).astype(np.intp, copy=False))
        return [int(v) for v in np.flatnonzero(counts) if v > 0]

    def _update_targets_label(self) -> None:
        if self.controller.volume is None:
            self.targets_label.setText("")
            return
        if self.all_labels_check.isChecked():
            vals = self._labels_present(self._axis())
            total = sum(len(self.planned_targets(v)) for v in vals)
            self.targets_label.setText(f"{len(vals)} label(s), {total} slice runs in all.")
            return
        t = self.planned_targets()
        if t:
            self.targets_label.setText(f"{len(t)} slice{'s' if len(t) != 1 else ''} to segment "
                                       f"({t[0]}–{t[-1]}, {AXIS_NAMES.get(self._axis(), '')}).")
        else:
            self.targets_label.setText("No slice to segment: every slice in the range is labeled; extend the range.")

    # ------------------------------------------------------------------ controller events
    def _on_volume_changed(self, volume) -> None:
        if self.running:
            self.cancel()
        self._discard_proposal()
        self._cache.clear()
        self._range_user_set = False
        if not self.pin_check.isChecked():
            self._excluded.clear()
            self._added.clear()
        self.refresh_support()

    def _on_active_label(self, _value: int) -> None:
        if not self.pin_check.isChecked():
            self._excluded.clear()
            self._added.clear()
            self._range_user_set = False
        self.refresh_support()

    def _on_view_changed(self, _view: str) -> None:
        if not self.pin_check.isChecked():
            self._excluded.clear()
            self._added.clear()
        self._range_user_set = False
        self.refresh_support()

    def _on_table_changed(self) -> None:
        if self._layer is not None:
            self._apply_layer_colormap()

    def _update_buttons(self) -> None:
        c = self.controller
        running = self.running
        has_scan = c.volume is not None
        has_prop = self._proposal is not None and not running and bool(self._proposal.indices)
        self.segment_button.setEnabled(has_scan and not running)
        self.medsam_button.setEnabled(has_scan and not running)
        self.add_button.setEnabled(has_scan)
        self.remove_button.setEnabled(bool(self._items))
        self.save_set_button.setEnabled(bool(self._items))
        self.cancel_button.setEnabled(running)
        self.accept_button.setEnabled(has_prop)
        self.reject_button.setEnabled(self._proposal is not None and not running)
        self.check_all_button.setEnabled(has_prop)
        self.check_none_button.setEnabled(has_prop)

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self._handle is not None and not self._handle.finished

    @property
    def proposal(self) -> Proposal | None:
        return self._proposal

    def _device(self) -> str:
        return self.device_combo.currentText() or "auto"

    def medsam_slices(self, label: int | None = None) -> list[int]:
        """Slices of ``label`` (default active) the MedSAM panel segmented on the view axis (its
        ``key_boxes``) where the label is drawn; [] without a MedSAM panel or boxes."""
        c = self.controller
        panel = self.medsam
        if panel is None or not hasattr(panel, "key_boxes") or c.volume is None:
            return []
        axis = self._axis()
        label = int(c.active_label if label is None else label)
        try:
            boxes = panel.key_boxes(axis=axis, label=label)
        except Exception:  # noqa: BLE001 - the MedSAM panel is optional
            log.exception("MedSAM key_boxes failed")
            return []
        drawn = set(self.labeled(label, axis))
        return sorted(int(i) for i in boxes if int(i) in drawn)

    def fill_from_medsam(self) -> bool:
        """Segment the rest with the MedSAM-segmented slices of the active label as support
        (falls back to the support list when there are none). Returns True when a run started."""
        c = self.controller
        if c.volume is None:
            return False
        slices = self.medsam_slices()
        if not slices:
            c.status("No MedSAM boxes of the active label on this view: using the labeled slices.", 6000)
            return self.segment_rest(all_labels=False)
        axis, label, bounds = self._axis(), int(c.active_label), self._bounds()
        items = [self._make_item(i, axis, label, bounds) for i in slices]
        return self.segment_rest(all_labels=False, items=items)

    def segment_rest(self, all_labels: bool | None = None, items: list[SupportItem] | None = None) -> bool:
        """Start a run (the "Segment the rest" button). ``all_labels`` None: the check box.
        Returns True when the run started (False: nothing to do, an error was shown, or the
        weights dialog opened and the run starts once the weights are in)."""
        c = self.controller
        if c.volume is None or self.running:
            return False
        if all_labels is None:
            all_labels = self.all_labels_check.isChecked()
        if not self.ensure_model(pending=lambda: self.segment_rest(all_labels, items)):
            return False
        if self._refresh_timer.isActive():
            self.refresh_support()
        try:
            return self._start(bool(all_labels), items)
        except MedsamGuiError as exc:
            c.show_error(exc, title="UniverSeg")
            return False
        finally:
            if self._proposal is None:  # no run: no (emptied) proposal layer left behind
                self._remove_layer()

    def _start(self, all_labels: bool, items: list[SupportItem] | None) -> bool:
        from ..models import incontext as ic

        c = self.controller
        self._discard_proposal(keep_layer=True)  # its layer is reused by this run (see _create_layer)
        axis = self._axis()
        vol = c.display_volume()
        labels_now = c.display_labels()
        n = int(vol.shape[axis])
        bounds = self._bounds()
        z_range = self.z_range()
        S = self.support_size_spin.value() or None
        ens = self.ensemble_spin.value()
        bs = self.batch_spin.value() or None
        dev = ic.resolve_device(self._device())
        model = self._model
        slice_hw = tuple(s for a, s in enumerate(vol.shape) if a != axis)
        plans: list[tuple[int, list[int], list[int]]] = []  # (label, targets, protected)
        if all_labels:
            values = self._labels_present(axis)
            if not values:
                raise UniversegPanelError("No label is drawn yet: draw the structures on a few slices first.")
            for v in values:
                prot = ic.labeled_slices(labels_now, v, axis)
                plans.append((v, ic.plan_targets(n, prot, z_range=z_range), prot))
            labels_copy = np.array(labels_now, copy=True)
            support = None
        else:
            label = int(c.active_label)
            support = self.support_set(items)
            prot = ic.labeled_slices(labels_now, label, axis)
            plans.append((label, ic.plan_targets(n, prot, z_range=z_range), prot))
            labels_copy = None
        plans = [p for p in plans if p[1]]
        if not plans:
            raise UniversegPanelError("Every slice in the range is already labeled: extend the range (from/to "
                                      "or Whole scan) to segment more slices.")
        results = {v: ic.InContextResult(label_value=v, axis=axis, slice_shape=slice_hw, targets=list(t),
                                         support_indices=list(p)) for v, t, p in plans}
        self._proposal = Proposal(c.volume, axis, results, slice_hw)
        grand = sum(len(t) for _, t, _ in plans)
        state = {"cancel": False}
        t0 = time.perf_counter()
        self.last_run = {"labels": [v for v, _, _ in plans], "targets": {v: list(t) for v, t, _ in plans},
                         "support_slices": ([it.index for it in (items if items is not None else self._items)]
                                            if support is not None else None),
                         "support_size": S, "ensemble": ens, "device": str(dev), "axis": axis,
                         "all_labels": all_labels, "total": grand, "seconds": None}

        def work():
            offset = 0
            for v, tgt, _p in plans:
                for ev in ic.iter_segment_rest(vol, labels_copy, v, model=model, bounds=bounds, support=support,
                                               support_size=S, targets=tgt, batch_size=bs, device=dev,
                                               ensemble=ens, axis=axis, cancel=lambda: state["cancel"],
                                               on_notice=lambda m: self.notice.emit(f"UniverSeg: {m}")):
                    yield (v, ev, offset + ev.done, grand)
                offset += len(tgt)
                if state["cancel"]:
                    return "cancelled"
            return "done"

        self._create_layer()
        self.progress.setRange(0, grand)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        what = "all labels" if all_labels else f"label {plans[0][0]}"
        self._cancel_state = state
        self._t0 = t0
        self._handle = c.run_worker(work(), on_yield=self._on_batch, on_done=self._on_done,
                                    on_error=self._on_error,
                                    description=f"UniverSeg: segmenting {grand} slice(s) of {what}…")
        handle = self._handle
        # the status bar's Cancel ends the handle without going through self.cancel()
        handle.add_done_callback(lambda h: self._check_handle() if self._handle is h else None)
        self._rebuild_proposal_list()
        self._update_buttons()
        return True

    def _on_batch(self, payload) -> None:
        v, ev, done, total = payload
        prop = self._proposal
        if prop is None or self._handle is None:
            return
        res = prop.results[v]
        for i, p in zip(ev.indices, ev.probabilities):
            res.probabilities[int(i)] = p
        prop.changed(ev.indices)
        for i in ev.indices:
            self._paint_layer_slice(int(i))
        if self._layer is not None:
            # redraw only when a changed slice is on screen: a redraw of the canvas costs the GUI
            # thread ~50 ms per batch; other slices are read from the data when the user goes there
            if self._on_screen(prop.axis, ev.indices):
                self._layer.refresh()
            else:
                self._layer_stale = True
        self._handle.set_progress(done, total)
        set_bar_value(self.progress, done, total)
        self._rebuild_proposal_list()

    def _on_notice(self, message: str) -> None:
        """GUI thread: an out-of-memory fallback (UniverSeg's or MedSAM's) for the status bar."""
        self.last_notice = message
        self.controller.status(message, 15000)

    def _on_done(self, _result) -> None:
        self._finish_run("done")

    def _on_error(self, exc) -> None:
        self._finish_run("error")
        self.controller.show_error(exc, title="UniverSeg failed")

    def _check_handle(self) -> None:
        h = self._handle
        if h is None:
            return
        if h.finished:
            self._finish_run("cancelled" if h.cancelled else ("error" if h.error is not None else "done"))

    def cancel(self) -> None:
        """Stop the run after the current batch; the finished slices stay proposed."""
        h = self._handle
        if h is None or h.finished:
            return
        if getattr(self, "_cancel_state", None) is not None:
            self._cancel_state["cancel"] = True
        h.cancel()
        self._finish_run("cancelled")

    def _finish_run(self, how: str) -> None:
        if self._handle is None:
            return
        self._handle = None
        if getattr(self, "_layer_stale", False) and self._layer is not None:
            self._layer.refresh()  # thumbnails and anything drawn from slices painted off screen
        self._layer_stale = False
        self.progress.setVisible(False)
        if getattr(self, "_cancel_state", None) is not None and how != "done":
            self._cancel_state["cancel"] = True
        self.last_run["seconds"] = time.perf_counter() - getattr(self, "_t0", time.perf_counter())
        prop = self._proposal
        if prop is not None:
            if how == "error":
                self._discard_proposal()
            else:
                prop.complete = how == "done"
                prop.cancelled = how == "cancelled"
                for r in prop.results.values():
                    r.cancelled = len(r.probabilities) < len(r.targets)
                if not prop.indices:
                    self._discard_proposal()
                    self.controller.status("UniverSeg cancelled before any slice was finished; nothing to review.",
                                           8000)
                elif how == "cancelled":
                    self.controller.status(f"UniverSeg cancelled: {len(prop.indices)} of {len(prop.planned)} "
                                           "slices proposed — accept or reject them.", 10000)
                else:
                    self.controller.status(f"UniverSeg proposed {len(prop.indices)} slices in "
                                           f"{self.last_run['seconds']:.1f} s — review, then Accept or Reject.",
                                           10000)
        self._rebuild_proposal_list()
        self._update_buttons()
        self.run_finished.emit(how)

    # ------------------------------------------------------------------ proposal layer
    @property
    def proposal_layer(self):
        layer = self._layer
        if layer is not None and layer in self.controller.viewer.layers:
            return layer
        return None

    def _create_layer(self) -> None:
        c = self.controller
        lab = c.labels_layer
        shape = c.display_labels().shape
        prop = self._proposal
        top = max(prop.results) if prop is not None and prop.results else 1
        dtype = np.uint8 if top <= 255 else np.uint16
        old = self.proposal_layer
        if (old is not None and old.data.shape == shape and old.data.dtype == dtype
                and tuple(old.scale) == tuple(lab.scale) and tuple(old.translate) == tuple(lab.translate)):
            # a new run while the last proposal is still shown: reuse its layer (adding a layer
            # costs napari ~0.5-0.7 s of GUI thread)
            old.data[...] = 0
            self._layer_stale = False
            self._apply_layer_colormap()
            old.refresh()
            return
        self._remove_layer()
        units = getattr(lab, "units", None)  # the scan's physical units (mm): no napari warning
        kw = {"units": units} if units is not None else {}
        layer = c.viewer.add_labels(np.zeros(shape, dtype=dtype), name=PROPOSAL_LAYER_NAME,
                                    scale=tuple(lab.scale), translate=tuple(lab.translate), opacity=0.8, **kw)
        try:
            layer.contour = 1
            layer.editable = False
        except Exception:  # pragma: no cover - cosmetic
            pass
        self._layer = layer
        self._layer_stale = False
        self._apply_layer_colormap()
        try:
            c.viewer.layers.selection.active = lab
        except Exception:  # pragma: no cover
            pass

    def _apply_layer_colormap(self) -> None:
        from .layers import label_colormap

        if self._layer is None:
            return
        try:
            self._layer.colormap = label_colormap(self.controller.label_table,
                                                  self._proposal.results.keys() if self._proposal else ())
        except Exception:  # pragma: no cover - cosmetic
            log.exception("proposal colormap")

    def _paint_layer_slice(self, i: int) -> None:
        layer, prop = self.proposal_layer, self._proposal
        if layer is None or prop is None:
            return
        sl = _slice_index(3, prop.axis, i)
        if i in prop.unchecked or i not in prop.indices:
            layer.data[sl] = 0
        else:
            comb = prop.combined(i)
            prop.counts(i, comb)
            layer.data[sl] = comb.astype(layer.data.dtype)

    def _on_screen(self, axis: int, indices) -> bool:
        """Whether any of display slices ``indices`` along ``axis`` is drawn now (3D view, a
        view across that axis, or the current slice)."""
        c = self.controller
        try:
            dims = c.viewer.dims
            if dims.ndisplay == 3 or axis in dims.displayed:
                return True
            return int(c.current_slice(axis)) in {int(i) for i in indices}
        except Exception:  # noqa: BLE001 - when unsure, redraw
            return True

    def _remove_layer(self) -> None:
        layer, self._layer = self._layer, None
        if layer is not None:
            try:
                if layer in self.controller.viewer.layers:
                    self.controller.viewer.layers.remove(layer)
            except Exception:  # pragma: no cover
                log.exception("removing the proposal layer")

    def _discard_proposal(self, keep_layer: bool = False) -> None:
        """Forget the proposal and remove its layer (``keep_layer``: empty it instead, for a new
        run about to reuse it; :meth:`segment_rest` removes it if that run does not start)."""
        self._proposal = None
        layer = self.proposal_layer if keep_layer else None
        if layer is not None:
            layer.data[...] = 0
            layer.refresh()
        else:
            self._remove_layer()
        self._rebuild_proposal_list()
        self._update_buttons()

    # ------------------------------------------------------------------ proposal list
    def _rebuild_proposal_list(self) -> None:
        lst = self.proposal_list
        lst.blockSignals(True)
        lst.clear()
        prop = self._proposal
        if prop is None:
            self.proposal_label.setText("No proposal.")
            lst.blockSignals(False)
            self.proposal_changed.emit()
            return
        table = self.controller.label_table
        for i in prop.indices:
            parts = []
            for v, k in prop.counts(i):
                if len(prop.results) > 1:
                    info = table.get(v)
                    parts.append(f"{info.name if info else v} {k:,} px")
                else:
                    parts.append(f"{k:,} px")
            item = QListWidgetItem(f"slice {i}: " + ", ".join(parts))
            item.setData(Qt.ItemDataRole.UserRole, int(i))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked if i in prop.unchecked else Qt.CheckState.Checked)
            lst.addItem(item)
        lst.blockSignals(False)
        done, planned = len(prop.indices), len(prop.planned)
        state = ("running" if self.running else "complete" if prop.complete else
                 "cancelled — partial" if prop.cancelled else "")
        self.proposal_label.setText(f"{done} of {planned} slices proposed ({state}); "
                                    f"{len(prop.checked())} ticked.")
        self.proposal_changed.emit()

    def proposal_slices(self) -> list[int]:
        """Slices with a proposal (display indices along the proposal's axis)."""
        return self._proposal.indices if self._proposal is not None else []

    def checked_slices(self) -> list[int]:
        return self._proposal.checked() if self._proposal is not None else []

    def set_slice_checked(self, index: int, checked: bool) -> None:
        """Tick / untick proposed slice ``index`` (same as clicking its check box)."""
        for r in range(self.proposal_list.count()):
            item = self.proposal_list.item(r)
            if int(item.data(Qt.ItemDataRole.UserRole)) == int(index):
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
                return
        raise KeyError(f"slice {index} has no proposal")

    def _on_proposal_item_changed(self, item) -> None:
        prop = self._proposal
        if prop is None:
            return
        i = int(item.data(Qt.ItemDataRole.UserRole))
        if item.checkState() == Qt.CheckState.Checked:
            prop.unchecked.discard(i)
        else:
            prop.unchecked.add(i)
        self._paint_layer_slice(i)
        if self._layer is not None:
            self._layer.refresh()
        done, planned = len(prop.indices), len(prop.planned)
        self.proposal_label.setText(f"{done} of {planned} slices proposed; {len(prop.checked())} ticked.")
        self.proposal_changed.emit()

    def _on_proposal_item_clicked(self, item) -> None:
        prop, c = self._proposal, self.controller
        if prop is None or c.volume is not prop.volume:
            return
        c.set_current_slice(prop.axis, int(item.data(Qt.ItemDataRole.UserRole)))

    def _check_all(self, on: bool) -> None:
        for r in range(self.proposal_list.count()):
            self.proposal_list.item(r).setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    # ------------------------------------------------------------------ accept / reject
    def accept(self, slices: list[int] | None = None) -> list[int]:
        """Write the ticked (or the given) proposed slices into the labels as ONE undo step.

        A slice where a label is drawn at this moment is never changed for that label; other
        labels' voxels are kept unless "Overwrite other labels". Removes the proposal. Returns
        the slices written."""
        c = self.controller
        prop = self._proposal
        if prop is None or self.running:
            return []
        if c.volume is not prop.volume:
            self._discard_proposal()
            return []
        chosen = prop.checked() if slices is None else [int(i) for i in slices if int(i) in prop.indices]
        overwrite = self.overwrite_check.isChecked()
        data = c.display_labels()
        written, skipped = [], []
        try:
            with c.edit_group():
                for i in chosen:
                    comb = prop.combined(i)
                    current = np.take(data, i, axis=prop.axis)
                    wrote = False
                    for v in [int(x) for x in np.unique(comb) if x > 0]:
                        if np.any(current == v):
                            skipped.append(i)  # the user's slice of this label: never overwritten
                            continue
                        if c.write_slice_mask(prop.axis, i, comb == v, v, overwrite_other=overwrite):
                            wrote = True
                    if wrote:
                        written.append(i)
        except Exception as exc:  # noqa: BLE001
            c.show_error(exc, title="Could not write the UniverSeg result")
        self._discard_proposal()
        msg = f"UniverSeg: accepted {len(written)} slice(s) (Edit > Undo removes them at once)."
        if skipped:
            msg += f" Skipped {len(set(skipped))} slice(s) already labeled."
        c.status(msg, 8000)
        return written

    def reject(self) -> None:
        """Discard the proposal (nothing is written)."""
        if self.running:
            self.cancel()
        had = self._proposal is not None
        self._discard_proposal()
        if had:
            self.controller.status("UniverSeg proposal rejected.", 5000)

    def shutdown(self) -> None:
        if self.running:
            self.cancel()


# ----------------------------------------------------------------------------- install


def install(controller, *, medsam=None) -> UniversegPanel:
    """Create the UniverSeg dock (and a Models menu entry); returns the panel. ``medsam``: the
    MedSAM panel (its key boxes are offered as support slices). Registers the pinned support
    set as the controller's state provider and the panel's shutdown with the controller."""
    panel = UniversegPanel(controller, medsam=medsam)
    controller.add_dock(panel, "UniverSeg", "right", tabify=medsam is not None)
    medsam_dock = getattr(medsam, "dock", None)
    if medsam_dock is not None:  # MedSAM is where a new user starts
        from qtpy.QtCore import QTimer

        medsam_dock.raise_()
        QTimer.singleShot(0, medsam_dock.raise_)
    window = controller.window
    if window is not None:
        window.add_action("models", "load_universeg_weights", "Load UniverSeg weights…", panel.show_weights_dialog,
                          tip="Download UniverSeg's weights or choose universeg_v1_nf64_ss64_STA.pt")
    controller.register_state_provider(STATE_NAME, panel.get_state, panel.set_state)
    controller.add_shutdown_hook(panel.shutdown)
    return panel
