"""Measurements dock: volume (mL), slice range and RECIST long/short diameters (mm) per label.

Measurements are made **on the scan's own grid**: the labels layer is mapped back with
``orientation.from_display`` (``controller.source_labels()``) and measured with
:func:`medsam_gui.core.measurements.measure_labels` and the scan's spacing (x, y, z mm), so
the numbers equal ``medsam-gui measure SCAN LABELS`` on the exported label map. The RECIST
diameters are taken on the scan's z slices (axial for axial acquisitions).

The "Slices" column shows the first and last slice holding the label as **display slice
numbers** along the display axis that the scan's z axis is shown on (for axial acquisitions,
the axial slider's numbers); the CSV export keeps the scan's own z indices (``z_min``,
``z_max``, as the CLI writes them). Double-click a row to go to the slice where the diameters
were measured.

Refresh: the Refresh button, and automatically (debounced) after every label edit when
"Auto refresh" is ticked. Computing runs off the GUI thread on a snapshot of the labels.
``ask_csv_path`` is a module-level function so tests can replace it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import config
from ..interactive import pause_point
from ..runtime import IDLE_NICE, lower_thread_priority

# the RECIST diameters come first, the slice range last; the dock's narrow headers are short
# (the full titles are their tooltips and ``row_values`` keys)
COLUMNS = ("Label", "Name", "Long axis (mm)", "Short axis (mm)", "Volume (mL)", "Slices")
HEADERS = ("#", "Name", "Long mm", "Short mm", "mL", "Slices")
COL_LABEL, COL_NAME, COL_LONG, COL_SHORT, COL_VOLUME, COL_SLICES = range(6)
AUTO_REFRESH_MS = 400


def ask_csv_path(parent: QWidget | None, suggested: str) -> str | None:
    """Save-file dialog for the CSV; returns the path (``.csv`` added when missing) or None."""
    path, _ = QFileDialog.getSaveFileName(parent, "Export measurements", suggested, "CSV (*.csv);;All files (*)")
    if not path:
        return None
    if not path.lower().endswith(".csv"):
        path += ".csv"
    return path


def display_slice_range(measurement, orientation, shape_zyx) -> tuple[int, int, int]:
    """(display axis, first, last): the scan z range of ``measurement`` as display slice
    numbers along the display axis that shows the scan's z axis (sorted ascending)."""
    axis = int(orientation.inverse_perm[0])
    z0, z1 = measurement.slice_range
    pts = orientation.index_to_display(np.array([[z0, 0, 0], [z1, 0, 0]], dtype=float), shape_zyx)
    a, b = int(round(pts[0, axis])), int(round(pts[1, axis]))
    return axis, min(a, b), max(a, b)


OVERLAY_LAYER = "RECIST diameters"


class MeasurementsPanel(QWidget):
    """Dock widget with one row per label (see the module docstring).

    Attributes: ``table``, ``refresh_button``, ``auto_check``, ``export_button``,
    ``measurements`` (list of LabelMeasurement from the last refresh). Signal ``refreshed``
    after each completed refresh.
    """

    refreshed = Signal()
    _computed = Signal(object, object, int)  # (measurements | None, exception | None, generation)

    def __init__(self, controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.measurements: list = []
        self._gen = 0
        self._running = False
        self._closed = False
        self._dirty = False
        self._thread: threading.Thread | None = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        self.table = QTableWidget(0, len(COLUMNS), self)
        for col, (short, title) in enumerate(zip(HEADERS, COLUMNS)):
            item = QTableWidgetItem(short)
            item.setToolTip(title)
            self.table.setHorizontalHeaderItem(col, item)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COL_NAME, QHeaderView.ResizeMode.Stretch)  # names give way first
        header.setMinimumSectionSize(24)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.setToolTip(
            "Measured on the scan's own grid (as exported). Slices: display slice numbers. "
            "Long/short axis: RECIST diameters on the scan slice where the label is largest. "
            "Double-click a row to go to that slice.")
        self.table.cellDoubleClicked.connect(self._go_to_row)
        layout.addWidget(self.table, 1)

        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)
        layout.addWidget(self.info_label)
        row = QHBoxLayout()
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(lambda _=False: self.refresh())
        self.auto_check = QCheckBox("Auto refresh")
        self.auto_check.setChecked(True)
        self.auto_check.setToolTip("Measure again after every label edit")
        self.export_button = QPushButton("Export CSV…")
        self.export_button.clicked.connect(lambda _=False: self.export_csv())
        self.overlay_check = QCheckBox("Show diameters")
        self.overlay_check.setChecked(True)
        self.overlay_check.setToolTip(
            "Draw each label's RECIST long and short axes on its measured slice (layer "
            f"“{OVERLAY_LAYER}”)")
        self.overlay_check.toggled.connect(lambda _on: self.update_overlay())
        row.addWidget(self.refresh_button)
        row.addWidget(self.auto_check)
        row.addWidget(self.overlay_check)
        row.addStretch(1)
        row.addWidget(self.export_button)
        layout.addLayout(row)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTO_REFRESH_MS)
        self._timer.timeout.connect(self.refresh)
        self._computed.connect(self._on_computed)
        controller.labels_changed.connect(self._on_labels_changed)
        controller.volume_changed.connect(lambda _v: self._on_labels_changed())
        controller.label_table_changed.connect(self._rename_rows)

    # ------------------------------------------------------------------ computing
    def compute(self) -> list:
        """Measure now on the GUI thread (scripts, tests): ``measure_labels`` of the labels on
        the source grid with the scan's spacing."""
        from ..core.measurements import measure_labels

        c = self.controller
        if c.volume is None:
            return []
        return measure_labels(np.asarray(c.source_labels()), c.volume.spacing, c.label_table)

    def _on_labels_changed(self) -> None:
        if self.auto_check.isChecked():
            self._timer.start()

    def refresh(self) -> None:
        """Measure again off the GUI thread (a snapshot of the labels is taken now)."""
        c = self.controller
        self._timer.stop()
        if self._closed:
            return
        if c.volume is None:
            self.measurements = []
            self._fill()
            self.refreshed.emit()
            return
        if self._running:
            self._dirty = True
            return
        from ..core.measurements import measure_labels
        from ..core.sparse_labels import nonzero_box

        # snapshot on the GUI thread: a copy of the labelled box only (~10 ms to find it), not of
        # the whole map (150 MiB for 512 x 512 x 300, and ~3x that while measuring it)
        src = c.source_labels()
        box = nonzero_box(src)
        labels = np.zeros((0, 0, 0), dtype=src.dtype) if box is None else np.array(src[box])
        origin = (0, 0, 0) if box is None else tuple(b.start for b in box)
        spacing = c.volume.spacing
        names = {info.value: info.name for info in c.label_table}
        self._gen += 1
        gen = self._gen
        self._running = True
        self.info_label.setText("Measuring…")

        def work():
            lower_thread_priority(IDLE_NICE)  # a table refresh must not slow the next box,
            # and it waits at pause points while one is decoded (medsam_gui.interactive)
            try:
                result = measure_labels(labels, spacing, names, origin_zyx=origin, pause=pause_point)
                error = None
            except BaseException as exc:  # noqa: BLE001 - shown in the panel
                result, error = None, exc
            try:
                self._computed.emit(result, error, gen)
            except RuntimeError:  # the panel was closed while measuring: nothing to show
                pass

        self._thread = threading.Thread(target=work, name="medsam-measure", daemon=True)
        self._thread.start()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Measure no more and wait for a measurement in progress (the app is closing)."""
        self._closed = True
        self._timer.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _on_computed(self, result, exc, gen) -> None:
        self._running = False
        if self._closed:
            return
        if exc is not None:
            self.info_label.setText(f"Could not measure: {exc}")
        elif gen == self._gen:
            self.measurements = list(result)
            self._fill()
        if self._dirty:
            self._dirty = False
            self.refresh()
            return
        self.refreshed.emit()

    # ------------------------------------------------------------------ table
    def _fill(self) -> None:
        c = self.controller
        self.table.setRowCount(len(self.measurements))
        for row, m in enumerate(self.measurements):
            if c.orientation is not None and c.volume is not None:
                _, a, b = display_slice_range(m, c.orientation, c.volume.shape)
            else:
                a, b = m.slice_range
            info = c.label_table.get(m.value) if c.volume is not None else None
            cells = [str(m.value), info.name if info is not None else m.name, f"{m.long_axis_mm:.1f}",
                     f"{m.short_axis_mm:.1f}", f"{m.volume_ml:.3f}", f"{a}–{b}" if a != b else f"{a}"]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == COL_NAME:
                    item.setToolTip(text)
                else:
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                self.table.setItem(row, col, item)
        n = len(self.measurements)
        self.info_label.setText(f"{n} label{'s' if n != 1 else ''} measured on the scan grid."
                                if c.volume is not None else "No scan open.")
        self.update_overlay()

    # ------------------------------------------------------------------ diameters on the canvas
    def overlay_lines(self) -> tuple[list[np.ndarray], list[tuple], list[str]]:
        """(lines, colours, texts) for the shown measurements: each line a (2, 3) array of display
        coordinates (the labels layer's data coordinates), long axis then short axis per label."""
        c = self.controller
        lines, colours, texts = [], [], []
        if c.volume is None or c.orientation is None:
            return lines, colours, texts
        shape = c.volume.shape
        for m in self.measurements:
            info = c.label_table.get(m.value)
            if info is not None and not info.visible:
                continue
            colour = tuple(info.color) if info is not None else (1.0, 1.0, 0.0, 1.0)
            for kind, mm, pts in (("L", m.long_axis_mm, m.long_axis_endpoints),
                                  ("S", m.short_axis_mm, m.short_axis_endpoints)):
                if not pts or mm <= 0 or pts[0] is None or pts[0][0] is None:
                    continue
                zyx = np.array([[m.axial_slice, p[1], p[0]] for p in pts], dtype=float)
                lines.append(c.orientation.index_to_display(zyx, shape))
                colours.append(colour)
                texts.append(f"{kind} {mm:.1f} mm")
        return lines, colours, texts

    def overlay_layer(self):
        """The napari Shapes layer showing the diameters, or None."""
        viewer = self.controller.viewer
        return viewer.layers[OVERLAY_LAYER] if OVERLAY_LAYER in viewer.layers else None

    def update_overlay(self) -> None:
        """Draw (or remove) the RECIST diameters layer; the active layer stays the same."""
        c = self.controller
        viewer = c.viewer
        layer = self.overlay_layer()
        lines, colours, texts = self.overlay_lines() if self.overlay_check.isChecked() else ([], [], [])
        if not lines:
            if layer is not None:
                viewer.layers.remove(layer)
            return
        ref = c.labels_layer if c.labels_layer is not None else c.image_layer
        active = viewer.layers.selection.active
        features = {"text": texts}
        text = {"string": "{text}", "color": "white", "size": 9, "anchor": "upper_left"}
        units = getattr(ref, "units", None)  # the same physical units (mm) as the scan
        kw = {"units": units} if units is not None else {}
        if layer is None:
            layer = viewer.add_shapes(lines, shape_type="line", edge_color=colours, edge_width=1.5,
                                      features=features, text=text, name=OVERLAY_LAYER,
                                      scale=ref.scale, translate=ref.translate, opacity=0.9, **kw)
        else:
            layer.scale, layer.translate = ref.scale, ref.translate
            if units is not None:
                layer.units = units
            layer.data = []
            layer.add_lines(lines, edge_color=colours, edge_width=1.5)
            layer.features = features
            layer.text = text
        layer.mode = "pan_zoom"
        layer.editable = False
        if active is not None and active in viewer.layers:
            viewer.layers.selection.active = active

    def _rename_rows(self) -> None:
        c = self.controller
        for row, m in enumerate(self.measurements):
            info = c.label_table.get(m.value)
            item = self.table.item(row, COL_NAME)
            if info is not None and item is not None:
                item.setText(info.name)
        self.update_overlay()  # colours and hidden labels

    def row_values(self) -> list[dict]:
        """The table as shown: one dict per row with the column titles as keys (strings)."""
        out = []
        for row in range(self.table.rowCount()):
            out.append({COLUMNS[col]: self.table.item(row, col).text() for col in range(len(COLUMNS))})
        return out

    def _go_to_row(self, row: int, _col: int = 0) -> None:
        c = self.controller
        if not 0 <= row < len(self.measurements) or c.volume is None:
            return
        m = self.measurements[row]
        axis = int(c.orientation.inverse_perm[0])
        p = c.orientation.index_to_display(np.array([m.axial_slice, 0, 0], dtype=float), c.volume.shape)
        c.set_current_slice(axis, int(round(float(p[axis]))))

    # ------------------------------------------------------------------ export
    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the measurements (``core.measurements.to_csv`` columns) to ``path`` or a file
        the user chooses; measures first when nothing is measured yet. Returns the path."""
        from ..core.measurements import to_csv

        c = self.controller
        if c.volume is None:
            c.show_error("Open a scan and segment something before exporting measurements.")
            return None
        if path is None:
            stem = c.volume.name or "scan"
            start = config.get_setting("last_dir")
            folder = Path(start) if isinstance(start, str) and Path(start).is_dir() else Path.home()
            chosen = ask_csv_path(self, str(folder / f"{stem}_measurements.csv"))
            if not chosen:
                return None
            path = chosen
        measurements = self.compute()
        self.measurements = measurements
        self._fill()
        try:
            to_csv(measurements, path)
        except OSError as exc:
            from ..errors import ExportError

            c.show_error(ExportError(f"Could not write {path}: {exc.strerror or exc}. Choose another folder."))
            return None
        c.status(f"Wrote measurements of {len(measurements)} labels to {path}")
        return Path(path)
