"""Crash recovery: the dialog offering crashed runs' autosaves (Restore / Discard / Later)
and the offer itself (:func:`offer_recovery`, :func:`recoverable`), for a SessionManager."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core import autosave_slots
from ..core.session import read_session_summary
from ..errors import SessionError
from .session_files import parent_widget, restore_session
from .state_codec import has_content


def _fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "unknown time"


def _fmt_voxels(counts: dict[int, int]) -> str:
    total = sum(counts.values())
    if not counts:
        return "0"
    parts = "; ".join(f"label {k}: {v:,}" for k, v in sorted(counts.items()))
    return f"{total:,} ({parts})"


class RecoveryDialog(QDialog):
    """Lists unsaved work of crashed runs; buttons Restore / Discard / Later.

    After ``exec()``: ``choice`` ("restore" | "discard" | "later") and ``selected()`` (the
    chosen :class:`~medsam_gui.core.autosave_slots.RecoverableSession`).
    """

    COLUMNS = ("Scan", "Autosaved at", "Labelled voxels", "Scan location")

    def __init__(self, parent: QWidget | None, items) -> None:
        super().__init__(parent)
        self.items = list(items)
        self.choice = "later"
        self.setWindowTitle("Recover unsaved work")
        layout = QVBoxLayout(self)
        n = len(self.items)
        self.intro = QLabel(
            f"medsam-gui did not close normally last time. {'This work was' if n == 1 else f'{n} sets of work were'} "
            "autosaved and can be restored:")
        self.intro.setWordWrap(True)
        layout.addWidget(self.intro)
        self.table = QTableWidget(n, len(self.COLUMNS), self)
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        for row, cells in enumerate(self.rows()):
            for col, text in enumerate(cells):
                cell = QTableWidgetItem(text)
                cell.setToolTip(text)
                self.table.setItem(row, col, cell)
        header = self.table.horizontalHeader()
        for col in range(len(self.COLUMNS) - 1):  # whole headers and cells; the location takes the rest
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(self.COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        if n:
            self.table.selectRow(0)
        self.table.doubleClicked.connect(lambda *_: self._done("restore"))
        layout.addWidget(self.table)
        buttons = QHBoxLayout()
        self.restore_button = QPushButton("Restore")
        self.discard_button = QPushButton("Discard")
        self.later_button = QPushButton("Later")
        self.restore_button.setToolTip("Open the scan and put the autosaved work back")
        self.discard_button.setToolTip("Delete this autosave for good")
        self.later_button.setToolTip("Keep it; it is offered again next time (File > Recover unsaved work…)")
        self.restore_button.setDefault(True)
        self.restore_button.clicked.connect(lambda: self._done("restore"))
        self.discard_button.clicked.connect(lambda: self._done("discard"))
        self.later_button.clicked.connect(lambda: self._done("later"))
        buttons.addStretch(1)
        for b in (self.restore_button, self.discard_button, self.later_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        fixed = sum(header.sectionSizeHint(col) for col in range(len(self.COLUMNS) - 1))
        self.resize(max(760, fixed + header.sectionSizeHint(len(self.COLUMNS) - 1) + 40), 260)

    def rows(self) -> list[list[str]]:
        """The table's text: scan name, autosave time, labelled voxels, scan path."""
        return [[it.scan_name or it.name or "(unnamed scan)", _fmt_time(it.saved_at),
                 _fmt_voxels(it.label_voxels), it.scan_path or ""] for it in self.items]

    def selected(self):
        rows = self.table.selectionModel().selectedRows()
        if not rows or not self.items:
            return self.items[0] if self.items else None
        return self.items[rows[0].row()]

    def _done(self, choice: str) -> None:
        self.choice = choice
        self.accept()

    def reject(self) -> None:  # Esc / window close = Later
        self.choice = "later"
        super().reject()


def ask_recovery(parent: QWidget | None, items, on_choice: Callable[[str, Any], None]) -> RecoveryDialog:
    """Show :class:`RecoveryDialog` without blocking (window-modal ``open()``); when a button
    is pressed ``on_choice(choice, item)`` is called. Returns the dialog."""
    dlg = RecoveryDialog(parent, items)
    dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, True)
    dlg.finished.connect(lambda _code, d=dlg: on_choice(d.choice, d.selected()))
    dlg.open()
    return dlg



def _worth_offering(item) -> bool:
    """A crashed slot holds work worth a question: labelled voxels, prompts, support sets or
    panel state with content (see :func:`~.state_codec.has_content`)."""
    if item.label_voxels:
        return True
    try:
        doc = read_session_summary(item.session_path)
    except SessionError:
        return True
    extra = doc.get("extra") if isinstance(doc.get("extra"), dict) else {}
    providers = extra.get("providers") if isinstance(extra.get("providers"), dict) else {}
    return bool(has_content(doc.get("prompts")) or doc.get("support_sets")
                or any(isinstance(e, dict) and has_content(e.get("state")) for e in providers.values()))


def recoverable(mgr) -> list:
    """Crashed runs' autosaves worth restoring (newest first); empty ones are deleted."""
    items = []
    for item in mgr.autosave.recoverable():
        if _worth_offering(item):
            items.append(item)
        else:
            try:
                autosave_slots.discard(item)
            except SessionError:
                pass
    return items


def offer_recovery(mgr, items=None):
    """Offer crashed runs' autosaves (:func:`ask_recovery`, not blocking). Restore opens the
    chosen one, Discard deletes it (and offers the rest), Later keeps them all for the next
    start. Returns the dialog (also ``manager.recovery_dialog``), or None when there is
    nothing to offer."""
    controller = mgr.controller
    if items is None:
        items = recoverable(mgr)
    items = [i for i in items if Path(i.slot).exists()]
    if not items:
        return None

    def chosen(choice: str, item) -> None:
        mgr.recovery_dialog = None
        mgr.recovery_choices.append(choice)
        if item is None or choice not in ("restore", "discard"):
            controller.status("Unsaved work from an earlier run is kept: File > Recover unsaved work….", 8000)
            return
        if choice == "discard":
            try:
                autosave_slots.discard(item)
                controller.status(f"Discarded the autosave of {item.scan_name or item.name}.", 5000)
            except SessionError as exc:
                controller.show_error(exc)
            rest = [i for i in items if i is not item]
            if rest:
                QTimer.singleShot(0, lambda: offer_recovery(mgr, rest))
            return
        restore_session(mgr, item)

    mgr.recovery_dialog = ask_recovery(parent_widget(controller), items, chosen)
    return mgr.recovery_dialog

