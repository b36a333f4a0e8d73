"""Small dialogs: questions, file pickers, series / component choosers, error boxes.

Every function here is a module-level function called through the module
(``dialogs.ask_yes_no(...)``), so tests replace them with ``monkeypatch.setattr``. Blocking
questions return plain Python values (``None`` = cancelled). :func:`show_error_box` is
*not* blocking: it opens a window-modal box and returns it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QPalette
from qtpy.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMessageBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import config

SCAN_FILTER = (
    "Scans (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.mgz *.mgh *.dcm);;"
    "NIfTI (*.nii *.nii.gz);;NRRD (*.nrrd *.nhdr);;MetaImage (*.mha *.mhd);;"
    "FreeSurfer (*.mgz *.mgh);;All files (*)"
)
LABELS_OPEN_FILTER = "Label maps (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.mgz);;All files (*)"
LABELS_SAVE_FILTER = "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha)"
LABEL_DESC_FILTER = "ITK-SNAP label descriptions (*.label *.txt);;All files (*)"
# link colours for a dark and a light background (WCAG contrast >= 4.5 on napari's themes)
LIGHT_LINK, DARK_LINK = QColor("#8cc4ff"), QColor("#0b4fb3")


def _last_dir() -> str:
    d = config.get_setting("last_dir")
    return d if isinstance(d, str) and os.path.isdir(d) else str(Path.home())


def remember_dir(path: str | os.PathLike) -> None:
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    try:
        config.set_setting("last_dir", str(folder))
    except OSError:  # settings are a convenience; never fail an action for them
        pass


def ask_open_file(parent: QWidget | None, title: str, file_filter: str) -> str | None:
    path, _ = QFileDialog.getOpenFileName(parent, title, _last_dir(), file_filter)
    if not path:
        return None
    remember_dir(path)
    return path


def ask_open_folder(parent: QWidget | None, title: str) -> str | None:
    path = QFileDialog.getExistingDirectory(parent, title, _last_dir())
    if not path:
        return None
    remember_dir(path)
    return path


def ask_save_file(parent: QWidget | None, title: str, suggested: str | os.PathLike | None,
                  file_filter: str) -> str | None:
    start = str(suggested) if suggested else _last_dir()
    path, selected = QFileDialog.getSaveFileName(parent, title, start, file_filter)
    if not path:
        return None
    low = path.lower()
    if not any(low.endswith(ext) for ext in (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".label", ".txt")):
        path += ".label" if "label desc" in (selected or "").lower() else ".nii.gz"
    remember_dir(path)
    return path


def ask_yes_no(parent: QWidget | None, title: str, text: str, *, default_yes: bool = False) -> bool:
    default = QMessageBox.StandardButton.Yes if default_yes else QMessageBox.StandardButton.No
    answer = QMessageBox.question(
        parent, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, default
    )
    return answer == QMessageBox.StandardButton.Yes


def ask_unsaved(parent: QWidget | None, what: str) -> str:
    """The labels have unsaved edits: returns "save", "discard" or "cancel"."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Unsaved labels")
    box.setText(f"The labels have unsaved changes. Save them before you {what}?")
    save = box.addButton("Save…", QMessageBox.ButtonRole.AcceptRole)
    discard = box.addButton("Discard changes", QMessageBox.ButtonRole.DestructiveRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(save)
    box.exec()
    clicked = box.clickedButton()
    if clicked is save:
        return "save"
    if clicked is discard:
        return "discard"
    if clicked is cancel:
        return "cancel"
    return "cancel"


def show_error_box(parent: QWidget | None, title: str, message: str, details: str | None = None) -> QMessageBox:
    """Open a (non-blocking, window-modal) error box and return it."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Critical)
    box.setWindowTitle(title)
    box.setText(message)
    if details:
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, True)
    box.open()
    return box


class SeriesDialog(QDialog):
    """Lists DICOM series (description, size, slice count); the user picks one."""

    def __init__(self, parent: QWidget | None, folder: str, series: Sequence) -> None:
        super().__init__(parent)
        self.setWindowTitle("Choose a DICOM series")
        self.series = list(series)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"The folder {folder} holds {len(self.series)} series. Choose one to open:"))
        self.table = QTableWidget(len(self.series), 4, self)
        self.table.setHorizontalHeaderLabels(["Description", "Modality", "Size (x × y × z)", "Slices"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        for row, info in enumerate(self.series):
            x, y, z = info.size_xyz
            cells = [info.description or "(no description)", getattr(info, "modality", "") or "",
                     f"{x} × {y} × {z}", str(info.n_slices)]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"Series UID {info.uid}")
                self.table.setItem(row, col, item)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.selectRow(0)
        self.table.doubleClicked.connect(self.accept)
        layout.addWidget(self.table)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(640, 300)

    def selected_uid(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.series[rows[0].row()].uid


def choose_series(parent: QWidget | None, folder: str, series: Sequence) -> str | None:
    """Ask which DICOM series to open; returns its SeriesInstanceUID or None."""
    dlg = SeriesDialog(parent, folder, series)
    if dlg.exec() != QDialog.DialogCode.Accepted:
        return None
    return dlg.selected_uid()


def choose_component(parent: QWidget | None, path: str, n_components: int, kind: str = "components") -> int | None:
    """Ask which component (time point / channel, 0-based) of a 4D or multi-channel scan to open."""
    items = [f"{kind.rstrip('s') if kind.endswith('s') else kind} {i}" for i in range(int(n_components))]
    item, ok = QInputDialog.getItem(
        parent, "Choose a component",
        f"{Path(path).name} holds {n_components} {kind}. Which one should be opened?",
        items, 0, False,
    )
    if not ok:
        return None
    return items.index(item)


def ask_color(parent: QWidget | None, rgba: Sequence[float], title: str = "Label colour") -> tuple[float, float, float, float] | None:
    """QColorDialog starting at ``rgba`` (floats 0..1); returns the new RGBA floats or None."""
    start = QColor.fromRgbF(*[float(c) for c in rgba])
    color = QColorDialog.getColor(start, parent, title, QColorDialog.ColorDialogOption.ShowAlphaChannel)
    if not color.isValid():
        return None
    return (color.redF(), color.greenF(), color.blueF(), color.alphaF())


def ask_drop_action(parent: QWidget | None, path: str) -> str | None:
    """A file was dropped while a scan is open: "scan", "labels" or None (cancel)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Open dropped file")
    box.setText(f"Open {Path(path).name} as…")
    labels = box.addButton("Labels on this scan", QMessageBox.ButtonRole.AcceptRole)
    scan = box.addButton("A new scan", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(labels)
    box.exec()
    clicked = box.clickedButton()
    if clicked is labels:
        return "labels"
    if clicked is scan:
        return "scan"
    return None


def contrast_ratio(a: QColor, b: QColor) -> float:
    """WCAG 2 contrast ratio of two colours (1 .. 21; 4.5 is the minimum for body text)."""
    def luminance(c: QColor) -> float:
        def lin(v: float) -> float:
            return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
        return 0.2126 * lin(c.redF()) + 0.7152 * lin(c.greenF()) + 0.0722 * lin(c.blueF())

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def link_color(widget: QWidget) -> QColor:
    """A link colour readable on ``widget``'s background (its palette, style sheet applied):
    the palette's own link colour when its contrast is at least 4.5, else a light or dark blue."""
    widget.ensurePolished()
    pal = widget.palette()
    background = pal.color(QPalette.ColorRole.Window)
    link = pal.color(QPalette.ColorRole.Link)
    if contrast_ratio(link, background) >= 4.5:
        return link
    return max((LIGHT_LINK, DARK_LINK), key=lambda c: contrast_ratio(c, background))
