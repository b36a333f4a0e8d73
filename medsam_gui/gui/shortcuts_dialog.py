"""Help > Keyboard shortcuts: a table of every key of the window, read from the live actions and
napari keymaps (:func:`.shortcuts.live_keys`) each time it opens, with a filter field."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QLineEdit,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from .shortcuts import live_keys


class ShortcutsDialog(QDialog):
    """Attributes: ``rows`` ([(key, what, where)]), ``table`` (QTableWidget, one row each),
    ``filter_edit`` (hides rows whose text does not contain it)."""

    def __init__(self, window, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts — medsam-gui")
        self.rows = live_keys(window)
        layout = QVBoxLayout(self)
        intro = QLabel("Keys of the menus and tools first, then napari's keys that still work in the "
                       "canvas (some only while that kind of layer is selected).")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter (key or action)")
        self.filter_edit.textChanged.connect(self._filter)
        layout.addWidget(self.filter_edit)
        self.table = QTableWidget(len(self.rows), 3)
        self.table.setHorizontalHeaderLabels(["Key", "Action", "Where"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        for r, row in enumerate(self.rows):
            for c, text in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(text))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        layout.addWidget(self.table)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(620, 640)

    def actions_for(self, key: str) -> list[str]:
        """What ``key`` (Qt portable text, "Ctrl+Y") does, per the table."""
        return [what for k, what, _where in self.rows if k == key]

    def _filter(self, text: str) -> None:
        needle = text.strip().lower()
        for r, row in enumerate(self.rows):
            self.table.setRowHidden(r, bool(needle) and not any(needle in cell.lower() for cell in row))
