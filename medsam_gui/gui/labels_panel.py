"""Labels panel: the label table (value, colour swatch, name) and its actions.

Thin widget: every user action calls one controller method — ``add_label``,
``rename_label`` (edit a name cell), ``recolor_label`` (Colour… / double-click the swatch),
``delete_label`` (asks; erases the voxels as one undoable edit), ``set_active_label``
(select a row), ``import_label_descriptions`` / ``export_label_descriptions`` (ITK-SNAP
``.label`` files). The table is rebuilt from ``controller.label_table`` whenever
``label_table_changed`` fires, and the selected row follows ``active_label_changed``.
"""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QBrush, QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import dialogs

COL_VALUE, COL_COLOR, COL_NAME = 0, 1, 2


class LabelsPanel(QWidget):
    """Dock widget listing the labels. ``table`` (QTableWidget: value, colour, name),
    buttons ``add_button``, ``color_button``, ``delete_button``, ``import_button``, ``export_button``."""

    def __init__(self, controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._rebuilding = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)

        self.active_label = QLabel("Active label: –")
        layout.addWidget(self.active_label)

        self.table = QTableWidget(0, 3, self)
        self.table.setMinimumHeight(150)  # about five rows stay visible beside the other panels
        self.table.setHorizontalHeaderLabels(["Value", "Colour", "Name"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                   | QAbstractItemView.EditTrigger.EditKeyPressed
                                   | QAbstractItemView.EditTrigger.SelectedClicked)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(COL_VALUE, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COL_COLOR, QHeaderView.ResizeMode.Fixed)
        header.setSectionResizeMode(COL_NAME, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(COL_COLOR, 56)
        self.table.setIconSize(QSize(36, 14))
        self.table.verticalHeader().setVisible(False)
        self.table.setToolTip("Select a row to paint with that label; double-click a name to rename it, "
                              "a colour to change it.")
        layout.addWidget(self.table, 1)

        row1 = QHBoxLayout()
        self.add_button = QPushButton("Add")
        self.add_button.setToolTip("Add a new label and make it active")
        self.color_button = QPushButton("Colour…")
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setToolTip("Remove the label and erase its voxels (undoable)")
        for b in (self.add_button, self.color_button, self.delete_button):
            row1.addWidget(b)
        layout.addLayout(row1)
        row2 = QHBoxLayout()
        self.import_button = QPushButton("Import .label…")
        self.import_button.setToolTip("Read label names and colours from an ITK-SNAP label description file")
        self.export_button = QPushButton("Export .label…")
        self.export_button.setToolTip("Write the label names and colours as an ITK-SNAP label description file")
        row2.addWidget(self.import_button)
        row2.addWidget(self.export_button)
        layout.addLayout(row2)

        self.add_button.clicked.connect(lambda _=False: self.controller.add_label())
        self.color_button.clicked.connect(lambda _=False: self.recolor_selected())
        self.delete_button.clicked.connect(lambda _=False: self.delete_selected())
        self.import_button.clicked.connect(lambda _=False: self.import_descriptions())
        self.export_button.clicked.connect(lambda _=False: self.export_descriptions())
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.table.cellDoubleClicked.connect(self._on_double_click)

        controller.label_table_changed.connect(self.refresh)
        controller.active_label_changed.connect(self._on_active_changed)
        controller.volume_changed.connect(lambda _v: self.refresh())
        self.refresh()

    # ------------------------------------------------------------------ view
    def refresh(self) -> None:
        """Rebuild the rows from ``controller.label_table``."""
        self._rebuilding = True
        try:
            infos = list(self.controller.label_table)
            self.table.setRowCount(len(infos))
            for row, info in enumerate(infos):
                value = QTableWidgetItem(str(info.value))
                value.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
                value.setData(Qt.ItemDataRole.UserRole, info.value)
                value.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                swatch = QTableWidgetItem("")
                swatch.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
                r, g, b, _a = info.color
                qcolor = QColor.fromRgbF(r, g, b, 1.0)
                swatch.setBackground(QBrush(qcolor))
                pix = QPixmap(36, 14)
                pix.fill(qcolor)
                swatch.setIcon(QIcon(pix))  # stays visible when the row is selected
                swatch.setToolTip("Double-click to change the colour")
                name = QTableWidgetItem(info.name)
                name.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsEditable)
                self.table.setItem(row, COL_VALUE, value)
                self.table.setItem(row, COL_COLOR, swatch)
                self.table.setItem(row, COL_NAME, name)
            self._select_value(self.controller.active_label)
        finally:
            self._rebuilding = False
        has_volume = self.controller.volume is not None
        for b in (self.add_button, self.color_button, self.delete_button, self.import_button, self.export_button):
            b.setEnabled(has_volume)
        self._show_active(self.controller.active_label)

    def row_of(self, value: int) -> int | None:
        for row in range(self.table.rowCount()):
            item = self.table.item(row, COL_VALUE)
            if item is not None and item.data(Qt.ItemDataRole.UserRole) == value:
                return row
        return None

    def value_at(self, row: int) -> int | None:
        item = self.table.item(row, COL_VALUE)
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def selected_value(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.value_at(rows[0].row())

    def _select_value(self, value: int) -> None:
        row = self.row_of(value)
        was = self._rebuilding
        self._rebuilding = True
        try:
            if row is None:
                self.table.clearSelection()
            else:
                self.table.selectRow(row)
        finally:
            self._rebuilding = was

    def _show_active(self, value: int) -> None:
        info = self.controller.label_table.get(value)
        name = info.name if info is not None else "(not in the table)"
        self.active_label.setText(f"Active label: {value} — {name}")

    # ------------------------------------------------------------------ actions
    def _on_selection(self) -> None:
        if self._rebuilding:
            return
        value = self.selected_value()
        if value is not None and value != self.controller.active_label:
            self.controller.set_active_label(value)

    def _on_active_changed(self, value: int) -> None:
        self._select_value(value)
        self._show_active(value)

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if self._rebuilding or item.column() != COL_NAME:
            return
        value = self.value_at(item.row())
        if value is None:
            return
        try:
            self.controller.rename_label(value, item.text())
        except Exception as exc:
            self.controller.show_error(exc)
            self.refresh()

    def _on_double_click(self, row: int, column: int) -> None:
        if column == COL_COLOR:
            value = self.value_at(row)
            if value is not None:
                self.recolor_value(value)

    def recolor_selected(self) -> None:
        value = self.selected_value()
        if value is None:
            self.controller.status("Select a label first.")
            return
        self.recolor_value(value)

    def recolor_value(self, value: int) -> None:
        info = self.controller.label_table.get(value)
        if info is None:
            return
        color = dialogs.ask_color(self, info.color, f"Colour of label {value} ({info.name})")
        if color is not None:
            self.controller.recolor_label(value, color)

    def delete_selected(self) -> None:
        value = self.selected_value()
        if value is None:
            self.controller.status("Select a label first.")
            return
        self.controller.delete_label(value)

    def import_descriptions(self) -> None:
        path = dialogs.ask_open_file(self, "Import label descriptions", dialogs.LABEL_DESC_FILTER)
        if path:
            self.controller.import_label_descriptions(path)

    def export_descriptions(self) -> None:
        path = dialogs.ask_save_file(self, "Export label descriptions", None, dialogs.LABEL_DESC_FILTER)
        if path:
            self.controller.export_label_descriptions(path)
