"""Window/level panel: CT presets, MR presets, manual level and width.

The presets follow the scan's modality: a CT shows the CT presets (level / width in HU), an MR
the MR presets (percentiles of its voxels > 0: HU windows mean nothing there, "Lung" would
turn a brain white), a scan of unknown modality both. Each user action calls one controller
method (``apply_preset``, ``auto_window``, ``set_window``, ``set_level_width``); the panel
follows ``controller.window_changed`` so the spin boxes always show the window as displayed
(also after napari's own contrast slider moved). Only the image layer's contrast limits
change; the scan data never do.
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
    """Dock widget. ``ct_presets`` / ``mr_presets``: the two preset groups; ``preset_buttons``:
    {CT preset name: QPushButton}; ``mr_preset_buttons``: {MR preset name: QPushButton};
    ``auto_button`` (the MR "auto" preset); ``level_spin`` / ``width_spin`` (QDoubleSpinBox, scan units)."""

    def __init__(self, controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._updating = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)

        self.ct_presets = QGroupBox("CT presets (level / width HU)")
        grid = QGridLayout(self.ct_presets)
        self.preset_buttons: dict[str, QPushButton] = {}
        for i, (name, (level, width)) in enumerate(intensity.WINDOW_PRESETS.items()):
            btn = QPushButton(f"{name.capitalize()}  {level:g}/{width:g}")
            btn.setToolTip(f"{name}: level {level:g}, width {width:g} HU")
            btn.clicked.connect(lambda _=False, n=name: self.controller.apply_preset(n))
            grid.addWidget(btn, i // 2, i % 2)
            self.preset_buttons[name] = btn
        layout.addWidget(self.ct_presets)

        self.mr_presets = QGroupBox("MR presets (percentiles of the voxels above 0)")
        grid = QGridLayout(self.mr_presets)
        self.mr_preset_buttons: dict[str, QPushButton] = {}
        for i, (name, (low, high)) in enumerate(intensity.MR_PRESETS.items()):
            btn = QPushButton(f"{name.capitalize()}  {low:g}–{high:g} %")
            btn.setToolTip(f"Window from the {low:g} to the {high:g} percentile of the scan's voxels above 0")
            if name == "auto":
                btn.clicked.connect(lambda _=False: self.controller.auto_window())
            else:
                btn.clicked.connect(lambda _=False, n=name: self._apply_mr_preset(n))
            grid.addWidget(btn, i // 2, i % 2)
            self.mr_preset_buttons[name] = btn
        self.auto_button = self.mr_preset_buttons["auto"]
        layout.addWidget(self.mr_presets)
        self._mr_bounds: dict[str, tuple[float, float]] | None = None  # of the scan shown

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
        if controller.volume is not None:
            self._show_presets(controller.volume.modality)

    def _on_spin(self, _value: float = 0.0) -> None:
        if self._updating or self.controller.volume is None:
            return
        self.controller.set_level_width(self.level_spin.value(), self.width_spin.value())

    def _on_volume(self, volume) -> None:
        self.setEnabled(True)
        self._mr_bounds = None
        self._show_presets(volume.modality)

    def _show_presets(self, modality: str) -> None:
        """CT presets for a CT, MR presets for an MR, both when the modality is unknown; hidden
        ones are disabled too."""
        for box, shown in ((self.ct_presets, modality != "MR"), (self.mr_presets, modality != "CT")):
            box.setVisible(shown)
            box.setEnabled(shown)

    def _apply_mr_preset(self, name: str) -> None:
        if self._mr_bounds is None:  # all MR presets from one pass over the scan
            self._mr_bounds = intensity.mr_preset_bounds(self.controller.volume.array)
        self.controller.set_window(*self._mr_bounds[name])

    def _on_window_changed(self, lo: float, hi: float) -> None:
        level, width = intensity.bounds_to_window(lo, hi)
        self._updating = True
        try:
            self.level_spin.setValue(level)
            self.width_spin.setValue(max(width, 0.1))
        finally:
            self._updating = False
        self.range_label.setText(f"Shown: {lo:g} … {hi:g}")
