"""Auto-segment dock: Hermes-R or the CLIP-Driven Universal Model segments the structures the
user picks by name; the clinician reviews the proposal and keeps, corrects or rejects each.

1. **Choose** (this module): the model, the modality (from the scan, editable), the structures
   (ONE searchable list with check boxes; the tooltip names the modalities, the official index
   and the source of each name), speed/quality (the sliding-window overlap as published, or less).
2. **Run** (:mod:`.auto_run`): the model loads and segments the scan off the GUI thread
   (``controller.run_worker``), with progress "windows done / total, time left" and Cancel; a
   missing weights file opens the weights dialog (licence first) and the run starts once it is in.
3. **Review** (:mod:`.auto_proposal`): the masks are drawn in the "Auto-segment proposal" layer
   and listed per structure; Accept writes the ticked (or all) structures as new named labels with
   distinct colours, as ONE undo step (existing labels untouched unless "Overwrite existing
   labels"); autosave follows. Reject drops the ticked ones.

Scripts/tests inject a loaded model with :meth:`AutoPanel.set_segmenter`.
"""

from __future__ import annotations

import threading

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import MedsamGuiError
from ..models.auto_model import Structure
from ..models.auto_models import MODALITIES
from .auto_proposal import AutoProposalMixin
from .auto_run import AutoRunMixin
from .model_dock import install_model_dock
from .proposal_widgets import progress_bar, proposal_label, proposal_list

DOCK_NAME = "Auto-segment"
STATE_NAME = "auto_segment"
KEY_ROLE = Qt.ItemDataRole.UserRole


class AutoPanel(AutoRunMixin, AutoProposalMixin, QWidget):
    """The "Auto-segment" dock (see the module docstring).

    Signals: ``run_finished(str)`` ("done", "cancelled" or "error"), ``proposal_changed()``.
    Scripting/tests: :meth:`set_segmenter`, :meth:`set_model`, :meth:`set_checked`,
    :meth:`checked_structures`, :meth:`run`, :meth:`cancel`, :meth:`accept`, :meth:`reject`,
    :meth:`proposal_keys`, :attr:`proposal_layer`, :attr:`running`, :attr:`overlap`.
    """

    run_finished = Signal(str)
    proposal_changed = Signal()
    _progress_sig = Signal(int, int)  # (windows done, total), emitted by the worker thread

    def __init__(self, controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._segmenters: dict = {}  # model name -> loaded AutoSegmenter
        self._ticked: dict[str, set[str]] = {}  # model name -> ticked structure keys
        self._structures: tuple[Structure, ...] | None = None  # read when first shown or used
        self._handle = None
        self._stop = threading.Event()
        self._t0 = 0.0
        self._pending = None
        self._weights_dialog = None
        self._proposal = None
        self._layer = None
        self.last_run: dict = {}
        self.accepted: list[dict] = []  # provenance of the labels accepted on this scan (saved in sessions)
        self._build()
        controller.volume_changed.connect(self._on_volume_changed)
        self._progress_sig.connect(self._on_progress)
        self.set_model(self.model_combo.currentData())
        if controller.volume is not None:
            self._on_volume_changed(controller.volume)
        self._update_buttons()

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        from ..models.auto_models import AUTO_MODELS, model_spec

        layout = QVBoxLayout(self)
        intro = QLabel("Pick structures by name; the model proposes them in the whole scan. Review, then accept "
                       "each into its own label (MedSAM, UniverSeg and the brush then correct it) or reject it.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.model_combo = QComboBox()
        for name in AUTO_MODELS:
            self.model_combo.addItem(model_spec(name).title, name)
        self.model_combo.currentIndexChanged.connect(lambda _i: self.set_model(self.model_combo.currentData()))
        form.addRow("Model", self.model_combo)
        self.modality_combo = QComboBox()
        self.modality_combo.addItems(MODALITIES)
        self.modality_combo.setToolTip("The scan's modality (read from the scan; change it if it is wrong).")
        self.modality_combo.currentTextChanged.connect(lambda _t: self._update_selection_label())
        form.addRow("Modality", self.modality_combo)
        self.quality_combo = QComboBox()
        self.quality_combo.setToolTip("Sliding-window overlap: as published gives the published accuracy; less "
                                      "overlap runs fewer windows (faster).")
        form.addRow("Speed / quality", self.quality_combo)
        layout.addLayout(form)

        box = QGroupBox("Structures")
        bl = QVBoxLayout(box)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter: name, modality or source…")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self._apply_filter)
        bl.addWidget(self.filter_edit)
        self.structure_list = QListWidget()
        self.structure_list.setMinimumHeight(160)
        self.structure_list.itemChanged.connect(self._on_structure_item_changed)
        bl.addWidget(self.structure_list)
        self.selection_label = QLabel("")
        bl.addWidget(self.selection_label)
        layout.addWidget(box)

        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Segment the ticked structures in the whole scan (in the background).")
        self.run_button.clicked.connect(lambda _=False: self.run())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(lambda _=False: self.cancel())
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.progress = progress_bar()
        layout.addWidget(self.progress)
        self.progress_label = QLabel("")
        layout.addWidget(self.progress_label)

        review = QGroupBox("Proposal")
        rl = QVBoxLayout(review)
        self.proposal_label = proposal_label()
        rl.addWidget(self.proposal_label)
        self.proposal_list = proposal_list()
        self.proposal_list.itemChanged.connect(lambda _item: self._update_buttons())
        rl.addWidget(self.proposal_list)
        self.overwrite_check = QCheckBox("Overwrite existing labels")
        self.overwrite_check.setToolTip("Off: voxels that already belong to a label keep it.")
        rl.addWidget(self.overwrite_check)
        buttons = QHBoxLayout()
        self.accept_button = QPushButton("Accept ticked")
        self.accept_button.clicked.connect(lambda _=False: self.accept(self._ticked_proposals()))
        self.accept_all_button = QPushButton("Accept all")
        self.accept_all_button.clicked.connect(lambda _=False: self.accept())
        self.reject_button = QPushButton("Reject ticked")
        self.reject_button.clicked.connect(lambda _=False: self.reject(self._ticked_proposals()))
        for b in (self.accept_button, self.accept_all_button, self.reject_button):
            buttons.addWidget(b)
        rl.addLayout(buttons)
        layout.addWidget(review)
        layout.addStretch(1)

    # ------------------------------------------------------------------ model and structures
    @property
    def model_name(self) -> str:
        return str(self.model_combo.currentData())

    def set_model(self, model: str) -> None:
        """Show ``model``'s catalogue (the structures ticked for it before stay ticked)."""
        from ..models.auto_models import model_spec

        spec = model_spec(model)
        if self.model_combo.currentData() != spec.name:
            self.model_combo.setCurrentIndex(self.model_combo.findData(spec.name))
            return  # the combo's signal comes back here
        seg = self._segmenters.get(spec.name)
        self._structures = None
        self.structure_list.clear()
        if self.isVisible():
            self._load_structures()
        overlap = spec.default_overlap if seg is None else seg.default_overlap
        self.quality_combo.clear()
        self.quality_combo.addItem(f"Best: as published (overlap {overlap:g})", overlap)
        self.quality_combo.addItem(f"Faster (overlap {overlap / 2:g})", overlap / 2)
        self.quality_combo.addItem("Fastest (no overlap)", 0.0)

    def set_segmenter(self, segmenter) -> None:
        """Use a loaded :class:`~medsam_gui.models.auto_model.AutoSegmenter` for its model (no
        weights file needed) and show that model."""
        self._segmenters[segmenter.name] = segmenter
        if self.model_name == segmenter.name:
            self.set_model(segmenter.name)
        else:
            self.model_combo.setCurrentIndex(self.model_combo.findData(segmenter.name))

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self._load_structures()

    def _load_structures(self) -> tuple[Structure, ...]:
        """The current model's catalogue (a loaded model's own), read and listed once per model."""
        from ..models.auto_models import catalogue

        if self._structures is None:
            seg = self._segmenters.get(self.model_name)
            try:
                self._structures = tuple(seg.structures) if seg is not None else catalogue(self.model_name)
            except MedsamGuiError as exc:
                self._structures = ()
                self.controller.show_error(exc, title="Auto-segment")
            self._fill_structures()
        return self._structures

    def _fill_structures(self) -> None:
        ticked = self._ticked.setdefault(self.model_name, set())
        lst = self.structure_list
        lst.blockSignals(True)
        lst.clear()
        for s in self._structures:
            item = QListWidgetItem(f"{s.title}  ({'/'.join(s.modalities)})")
            item.setData(KEY_ROLE, s.key)
            item.setToolTip(f"{s.title} — {s.key}, index {s.index}\nModalities: {', '.join(s.modalities)}\n"
                            f"Source: {s.source}")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if s.key in ticked else Qt.CheckState.Unchecked)
            lst.addItem(item)
        lst.blockSignals(False)
        self._apply_filter(self.filter_edit.text())

    def _apply_filter(self, text: str) -> None:
        words = text.lower().split()
        for row, s in enumerate(self._structures or ()):
            hay = " ".join((s.title, s.key, s.source, " ".join(s.modalities), str(s.index))).lower()
            self.structure_list.item(row).setHidden(not all(w in hay for w in words))
        self._update_selection_label()

    def _on_structure_item_changed(self, item) -> None:
        ticked = self._ticked.setdefault(self.model_name, set())
        key = item.data(KEY_ROLE)
        if item.checkState() == Qt.CheckState.Checked:
            ticked.add(key)
        else:
            ticked.discard(key)
        self._update_selection_label()
        self._update_buttons()

    def _update_selection_label(self) -> None:
        from ..models.auto_models import modality_mismatches

        chosen = self.checked_structures()
        shown = sum(not self.structure_list.item(r).isHidden() for r in range(self.structure_list.count()))
        text = f"{len(chosen)} ticked of {len(self._structures or ())} ({shown} shown)."
        odd = modality_mismatches(chosen, self.modality)
        if odd:
            text += f" Not learnt on {self.modality}: {', '.join(s.title for s in odd)}."
        self.selection_label.setText(text)

    def set_checked(self, keys, checked: bool = True) -> None:
        """Tick (or untick) the structures ``keys`` of the current model, like clicking them."""
        self._load_structures()
        wanted = set(keys)
        for r in range(self.structure_list.count()):
            item = self.structure_list.item(r)
            if item.data(KEY_ROLE) in wanted:
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)

    def checked_structures(self) -> list[Structure]:
        """The ticked structures of the current model, in catalogue order."""
        ticked = self._ticked.get(self.model_name, set())
        return [s for s in self._structures or () if s.key in ticked]

    @property
    def overlap(self) -> float:
        return float(self.quality_combo.currentData())

    @property
    def modality(self) -> str:
        return self.modality_combo.currentText()

    def _on_volume_changed(self, volume) -> None:
        if volume.modality in MODALITIES:
            self.modality_combo.setCurrentText(volume.modality)
        self.accepted = []
        self._discard_proposal()

    # ------------------------------------------------------------------ sessions
    def get_state(self) -> dict:
        """The choices (model, ticked structures, overlap) and the provenance of the accepted labels
        (``accepted``: [{"model", "key", "title", "value", "modality", "overlap"}])."""
        return {"model": self.model_name, "ticked": {m: sorted(k) for m, k in self._ticked.items()},
                "overlap": self.overlap, "accepted": [dict(a) for a in self.accepted]}

    def set_state(self, state: dict) -> None:
        self._ticked = {str(m): set(keys) for m, keys in dict(state.get("ticked", {})).items()}
        self.accepted = [dict(a) for a in state.get("accepted", [])]
        self.set_model(state.get("model", self.model_name))  # lists the model's structures, ticked as saved
        index = self.quality_combo.findData(state.get("overlap"))
        if index >= 0:
            self.quality_combo.setCurrentIndex(index)

    def _update_buttons(self) -> None:
        c = self.controller
        running = self.running
        self.run_button.setEnabled(not running and c.volume is not None and bool(self.checked_structures()))
        self.cancel_button.setEnabled(running)
        has = self._proposal is not None and not running
        self.accept_all_button.setEnabled(has)
        ticked = bool(self._ticked_proposals()) and has
        self.accept_button.setEnabled(ticked)
        self.reject_button.setEnabled(ticked)


def install(controller) -> AutoPanel:
    """Create the Auto-segment dock (tabbed with the docks on the right), its Models menu entry
    (with a main window), its session state provider and shutdown hook; returns the panel."""
    return install_model_dock(
        controller, AutoPanel(controller), title=DOCK_NAME, tabify=True, state_name=STATE_NAME,
        action="load_auto_weights", action_text="Load automatic model weights…",
        tip="Download or choose the weights of the model chosen in the Auto-segment dock")
