"""UniverSeg dock: segment the rest of a scan in context from a few labeled slices.

Workflow (everything in *display order*, slices along the current view's display axis
``controller.view_axis``; arrays are ``controller.display_volume()`` / ``display_labels()``):

1. **Support set** (:mod:`.universeg_support_list`): by default the labeled slices of the active
   label, windowed as displayed; "Add current slice" (also a negative example), "Remove", "Keep
   support set" (pin: a frozen copy that survives opening another scan), example-set files.
   When the list holds more than S entries an evenly spread subset is used (others greyed).
2. **Targets** (this module): from the first to the last labeled slice of the active label,
   extended to the "from"/"to" spin boxes, without the labeled slices (never changed).
3. **Run** (:mod:`.universeg_run`): ``controller.run_worker`` with
   :func:`~medsam_gui.models.incontext_proposal.iter_plans`; Cancel stops before the next batch
   and keeps the partial proposal. "All labels" segments each drawn label from its own slices
   and combines them without overlap. "Fill from MedSAM boxes" uses the slices the MedSAM panel
   (passed to :func:`install`) segmented as support.
4. **Proposal** (:mod:`.universeg_proposal`): a ``"UniverSeg proposal"`` layer and a list of
   proposed slices with check boxes; Accept writes the ticked slices as ONE undo step (a slice
   where the label is drawn is skipped; other labels kept unless "Overwrite other labels");
   Reject discards everything. "Add accepted slices to the examples" (default on) decides
   whether accepted slices join the live support set; the status bar says which happened.

Layout: the run and review buttons stay in a fixed strip at the top of the dock; the rest
scrolls, the run settings folded (:mod:`.collapsible`).

Weights: ``universeg_v1`` from the model manager, else a weights dialog (download or choose a
file). Scripts/tests inject a model with :meth:`UniversegPanel.set_model`.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QSize, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import config
from ..core.support_selection import LiveSupport
from ..core.slice_presence import SlicePresence
from .collapsible import CollapsibleSection, dock_body
from .model_dock import install_model_dock
from .proposal_widgets import progress_bar, proposal_label, proposal_list
from .universeg_proposal import ProposalMixin
from .universeg_run import RunMixin
from .universeg_support_list import AXIS_NAMES, THUMB, SupportListMixin

SETTINGS_KEY = "universeg_panel"
REFRESH_MS = 250
STATE_NAME = "universeg_support"


class UniversegPanel(SupportListMixin, RunMixin, ProposalMixin, QWidget):
    """The "UniverSeg" dock (see the module docstring).

    Signals: ``support_changed()`` (the support list was rebuilt), ``proposal_changed()``
    (slices arrived, were checked/unchecked, accepted or rejected), ``run_finished(str)``
    ("done", "cancelled" or "error"), ``notice(str)`` (from worker threads: GPU out of memory).

    Scripting/tests: :meth:`set_model`, :meth:`segment_rest`, :meth:`fill_from_medsam`,
    :meth:`cancel`, :meth:`accept`, :meth:`reject`, :meth:`support_items`,
    :meth:`proposal_slices`, :meth:`set_slice_checked`, :meth:`planned_targets`,
    :meth:`save_example_set`, :meth:`load_example_set`, :attr:`proposal_layer`, :attr:`running`.
    """

    support_changed = Signal()
    proposal_changed = Signal()
    run_finished = Signal(str)
    notice = Signal(str)

    def __init__(self, controller, medsam=None, parent: QWidget | None = None) -> None:
        """``medsam``: the MedSAM panel (its ``key_boxes(axis=, label=)`` feed "Fill from MedSAM
        boxes"), or None."""
        super().__init__(parent)
        self.controller = controller
        self.medsam = medsam
        self._model = None
        self._items = []  # SupportSlice, in list order
        self._live = LiveSupport()
        self._live_keys: list = []  # cache keys of the examples built since the last refresh
        self._thumbs: dict = {}
        self._proposal = None
        self._layer = None
        self._layer_stale = False
        self._handle = None
        self._cancel_state = {"cancel": False}
        self._t0 = 0.0
        self._pending = None  # action to run once weights are available
        self._range_user_set = False
        self._weights_dialog = None
        self._was_pinned = False
        self._presence = SlicePresence()  # labeled slices, updated per edited slice
        self._support_stale = False  # labels changed while the panel was hidden
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
        """Always in view (top): "Segment the rest", progress/Cancel, the proposal's summary and
        Accept/Reject; below, in a scroll area: the introduction, the support set, the slices to
        segment, the proposed slices and, folded, the run settings."""
        actions = QWidget()
        al = QVBoxLayout(actions)
        al.setContentsMargins(2, 2, 2, 2)
        row = QHBoxLayout()
        self.segment_button = QPushButton("Segment the rest")
        self.segment_button.setToolTip("Segment the unlabeled slices of the active label in the range, "
                                       "using the support set below. The result is a proposal to review.")
        self.medsam_button = QPushButton("Fill from MedSAM boxes")
        self.medsam_button.setToolTip(
            "One click from MedSAM to a full 3D mask: box the structure on 3–5 slices spread over it "
            "with the MedSAM panel, then click here. The MedSAM-segmented slices are the examples and "
            "UniverSeg proposes the slices in between.")
        row.addWidget(self.segment_button, 1)
        row.addWidget(self.medsam_button, 1)
        al.addLayout(row)
        row = QHBoxLayout()
        self.progress = progress_bar()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop after the current batch; the finished slices stay proposed.")
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        al.addLayout(row)
        self.proposal_label = proposal_label()
        al.addWidget(self.proposal_label)
        row = QHBoxLayout()
        self.check_all_button = QPushButton("All")
        self.check_all_button.setToolTip("Tick every proposed slice.")
        self.check_none_button = QPushButton("None")
        self.check_none_button.setToolTip("Untick every proposed slice.")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Write the ticked slices into the labels (one undo step).")
        self.reject_button = QPushButton("Reject")
        self.reject_button.setToolTip("Discard the whole proposal.")
        for b in (self.check_all_button, self.check_none_button, self.accept_button, self.reject_button):
            row.addWidget(b)
        al.addLayout(row)
        self.add_accepted_check = QCheckBox("Add accepted slices to the examples")
        self.add_accepted_check.setChecked(bool(self.settings.get("add_accepted", True)))
        self.add_accepted_check.setToolTip(
            "Ticked: slices you accept join the support set, so the next run learns from them too.\n"
            "Unticked: they are written to the labels but left out of the support set.")
        al.addWidget(self.add_accepted_check)

        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(2, 0, 2, 2)
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

        # --- proposed slices
        pr = QGroupBox("Proposed slices")
        pl = QVBoxLayout(pr)
        self.proposal_list = proposal_list("Untick the slices you do not want; click a slice to go to it.")
        pl.addWidget(self.proposal_list)
        layout.addWidget(pr)

        # --- run settings (folded)
        self.run_section = CollapsibleSection("Run settings (support size, device, weights)",
                                              settings_key="universeg_run_section_open")
        rl = QFormLayout()
        self.run_section.body_layout.addLayout(rl)
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
        self.weights_button = QPushButton("UniverSeg weights…")
        rl.addRow(self.weights_button)
        layout.addWidget(self.run_section)
        layout.addStretch(1)
        self.settings_scroll = dock_body(self, actions, body)

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
        c.labels_changed.connect(self._on_labels_changed)
        c.active_label_changed.connect(self._on_active_label)
        c.window_changed.connect(lambda _lo, _hi: self._schedule_refresh())
        c.view_changed.connect(self._on_view_changed)
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
        self.add_accepted_check.toggled.connect(lambda v: self._save("add_accepted", bool(v)))

    def _save(self, key: str, value) -> None:
        self.settings[key] = value
        config.try_set_setting(SETTINGS_KEY, dict(self.settings))

    # ------------------------------------------------------------------ geometry helpers
    def _axis(self) -> int:
        return int(self.controller.view_axis)

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
        return str(v.name or (Path(v.path).name if v.path else "scan"))

    def _label_color(self, value: int):
        info = self.controller.label_table.get(int(value))
        return info.color[:3] if info is not None else (1.0, 0.4, 0.1)

    def labeled(self, label: int | None = None, axis: int | None = None) -> list[int]:
        """Display slice indices along ``axis`` (default: view axis) where ``label`` (default:
        active) is drawn."""
        c = self.controller
        if c.volume is None:
            return []
        axis = self._axis() if axis is None else axis
        label = c.active_label if label is None else label
        return self._presence.slices(c.display_labels(), int(label), axis)

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

    def _update_targets_label(self) -> None:
        if self.controller.volume is None:
            self.targets_label.setText("")
            return
        if self.all_labels_check.isChecked():
            from ..models.incontext_proposal import labels_present

            vals = labels_present(self.controller.display_labels())
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
    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if self._support_stale:
            self.refresh_support()

    def _on_labels_changed(self) -> None:
        self._presence.changed(self.controller.edited_slice)
        self._schedule_refresh()

    def _on_volume_changed(self, volume) -> None:
        self._presence.changed(None)
        if self.running:
            self.cancel()
        self._discard_proposal()
        self._live.clear_cache()
        self._range_user_set = False
        if not self.pin_check.isChecked():
            self._live.reset()
        self.refresh_support()

    def _on_active_label(self, _value: int) -> None:
        if not self.pin_check.isChecked():
            self._live.reset()
            self._range_user_set = False
        self.refresh_support()

    def _on_view_changed(self, _view: str) -> None:
        if not self.pin_check.isChecked():
            self._live.reset()
        self._range_user_set = False
        self.refresh_support()

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


def install(controller, medsam=None) -> UniversegPanel:
    """Create the UniverSeg dock (tabbed with the MedSAM dock when ``medsam`` is given), its
    Models menu entry (with a main window), its session state provider
    and shutdown hook; returns the panel."""
    return install_model_dock(
        controller, UniversegPanel(controller, medsam), title="UniverSeg", tabify=medsam is not None,
        state_name=STATE_NAME, action="load_universeg_weights", action_text="Load UniverSeg weights…",
        tip="Download UniverSeg's weights or choose universeg_v1_nf64_ss64_STA.pt")
