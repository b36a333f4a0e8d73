"""Window/level panel: CT presets, MR auto window, manual level and width.

Each user action calls one controller method (``apply_preset``, ``auto_window``,
``set_level_width``); the panel follows ``controller.window_changed`` so the spin boxes
always show the window as displayed (also after napari's own contrast slider moved).
Only the image layer's contrast limits change; the scan data never do.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core import intensity


class WindowPanel(QWidget):
    """Dock widget. ``preset_buttons``: {preset name: QPushButton}; ``auto_button``;
    ``level_spin`` / ``width_spin`` (QDoubleSpinBox, scan units)."""

    def __init__(self, controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._updating = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)

        presets = QGroupBox("CT presets (level / width HU)")
        grid = QGridLayout(presets)
        self.preset_buttons: dict[str, QPushButton] = {}
        for i, (name, (level, width)) in enumerate(intensity.WINDOW_PRESETS.items()):
            btn = QPushButton(f"{name.capitalize()}  {level:g}/{width:g}")
            btn.setToolTip(f"{name}: level {level:g}, width {width:g} HU")
            btn.clicked.connect(lambda _=False, n=name: self.controller.apply_preset(n))
            grid.addWidget(btn, i // 2, i % 2)
            self.preset_buttons[name] = btn
        self.auto_button = QPushButton("MR auto (0.5–99.5 %)")
        self.auto_button.setToolTip("Window from the 0.5 and 99.5 percentiles of the voxels above 0")
        self.auto_button.clicked.connect(lambda _=False: self.controller.auto_window())
        n = len(self.preset_buttons)
        grid.addWidget(self.auto_button, n // 2, n % 2)
        layout.addWidget(presets)

        form = QFormLayout()
        self.level_spin = QDoubleSpinBox()
        self.width_spin = QDoubleSpinBox()
        for spin in (self.level_spin, self.width_spin):
            spin.setDecimals(1)
            spin.setKeyboardTracking(False)
            spin.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.level_spin.setRange(-1e7, 1e7)
        self.width_spin.setRange(0.1, 2e7)
        self.level_spin.setSingleStep(10)
        self.width_spin.setSingleStep(10)
        form.addRow("Level", self.level_spin)
        form.addRow("Width", self.width_spin)
        layout.addLayout(form)
        self.range_label = QLabel("")
        self.range_label.setStyleSheet("color: gray")
        layout.addWidget(self.range_label)
        layout.addStretch(1)

        self.level_spin.valueChanged.connect(self._on_spin)
        self.width_spin.valueChanged.connect(self._on_spin)
        controller.window_changed.connect(self._on_window_changed)
        controller.volume_changed.connect(self._on_volume)
        self.setEnabled(controller.volume is not None)

    def _on_spin(self, _value: float = 0.0) -> None:
        if self._updating or self.controller.volume is None:
            return
        self.controller.set_level_width(self.level_spin.value(), self.width_spin.value())

    def _on_volume(self, volume) -> None:
        self.setEnabled(True)

    def _on_window_changed(self, lo: float, hi: float) -> None:
        level, width = intensity.bounds_to_window(lo, hi)
        self._updating = True
        try:
            self.level_spin.setValue(level)
            self.width_spin.setValue(max(width, 0.1))
        finally:
            self._updating = False
        self.range_label.setText(f"Shown: {lo:g} … {hi:g}")
