"""The start screen over the canvas while no scan is open (instead of napari's welcome page):
Open scan…, Open DICOM folder…, Open the demo, and the recent scans.

The buttons trigger the window's own File actions (``open_scan``, ``open_dicom``,
``open_demo``); a recent scan opens with ``Controller.open_scan``. The screen follows the
canvas' size and hides as soon as a scan is shown (``Controller.volume_changed``).
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .scan_files import recent_scans

BUTTONS = (("open_scan", "Open scan…"), ("open_dicom", "Open DICOM folder…"), ("open_demo", "Open the demo"))


class StartScreen(QFrame):
    """Child of the canvas widget ``canvas``, covering it.

    Attributes: ``buttons`` ({action name: QPushButton}), ``recent_list`` (QListWidget; item data
    = the path; activating an item opens it), ``recent_label``.
    """

    def __init__(self, window, canvas: QWidget) -> None:
        super().__init__(canvas)
        self._window = window
        self.setObjectName("medsam_start_screen")
        self.setAutoFillBackground(True)
        outer = QHBoxLayout(self)
        outer.addStretch(1)
        column = QVBoxLayout()
        outer.addLayout(column)
        outer.addStretch(1)
        column.addStretch(1)
        title = QLabel("medsam-gui")
        title.setStyleSheet("font-size: 22pt; font-weight: bold;")
        column.addWidget(title, 0, Qt.AlignmentFlag.AlignHCenter)
        intro = QLabel("Segment CT and MR scans with MedSAM and UniverSeg.\n"
                       "Open a scan to start, or drop a scan file or DICOM folder here.")
        intro.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        column.addWidget(intro)
        self.buttons: dict[str, QPushButton] = {}
        for name, text in BUTTONS:
            action = window.actions[name]
            button = QPushButton(action.icon(), text)
            button.setToolTip(action.toolTip())
            button.setMinimumWidth(260)
            button.clicked.connect(lambda _=False, a=action: a.trigger())
            column.addWidget(button, 0, Qt.AlignmentFlag.AlignHCenter)
            self.buttons[name] = button
        self.recent_label = QLabel("Recent scans")
        self.recent_label.setStyleSheet("font-weight: bold; margin-top: 12px;")
        column.addWidget(self.recent_label)
        self.recent_list = QListWidget()
        self.recent_list.setMinimumWidth(420)
        self.recent_list.setToolTip("Double-click (or Enter) to open")
        self.recent_list.itemActivated.connect(self._open_recent)
        column.addWidget(self.recent_list)
        column.addStretch(2)
        canvas.installEventFilter(self)
        window.controller.volume_changed.connect(self._on_volume_changed)
        self.refresh()
        self.setGeometry(canvas.rect())
        self.setVisible(window.controller.volume is None)

    def detach(self) -> None:
        """The window closes: take the event filter and the connection off, and let Qt delete
        this widget (a never-shown napari window keeps its canvas, which would keep this
        widget, and through it the window, alive)."""
        self.parent().removeEventFilter(self)
        self._window.controller.volume_changed.disconnect(self._on_volume_changed)
        self._window = None
        self.deleteLater()

    def refresh(self) -> None:
        """Fill the recent scans list from the settings."""
        self.recent_list.clear()
        for path in recent_scans():
            item = QListWidgetItem(f"{path.name}  —  {path.parent}")
            item.setData(Qt.ItemDataRole.UserRole, str(path))
            item.setToolTip(str(path))
            self.recent_list.addItem(item)
        empty = self.recent_list.count() == 0
        if not empty:  # as tall as its entries
            rows = self.recent_list.count() * self.recent_list.sizeHintForRow(0)
            self.recent_list.setFixedHeight(rows + 2 * self.recent_list.frameWidth() + 4)
        self.recent_label.setVisible(not empty)
        self.recent_list.setVisible(not empty)

    def _open_recent(self, item: QListWidgetItem) -> None:
        self._window.controller.open_scan(Path(item.data(Qt.ItemDataRole.UserRole)))

    def _on_volume_changed(self, volume) -> None:
        self.refresh()
        self.setVisible(volume is None)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt naming
        if event.type() == QEvent.Type.Resize and obj is self.parent():
            self.setGeometry(obj.rect())
        return False
