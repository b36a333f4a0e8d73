"""The voxel under the mouse, always: a permanent status-bar readout.

napari's own status bar shows the value of the *selected* layer only (with the labels layer
selected, the scan's HU are not shown). This readout shows, whichever layer is selected, the
scan's own voxel index (i, j, k: the x, y, z index of the file, as ITK-SNAP shows it), the
scan's value there (HU for CT) and the label, e.g. ``x 120 y 88 z 14 · −45 HU · label 2 (Liver)``.

It is fed by napari's cursor (mouse moves over the main canvas) and by the linked views'
panes (:meth:`CursorReadout.show_display_point`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qtpy.QtWidgets import QLabel

from ..core.orientation import nearest_display_index, source_voxel

MINUS = "\u2212"


@dataclass(frozen=True)
class CursorSample:
    """The voxel under the cursor: ``ijk`` the scan's own (x, y, z) index, ``display_index``
    (display axes 0, 1, 2), ``value`` the scan's value there (float), ``label`` the label value
    and ``text`` what the readout shows."""

    ijk: tuple[int, int, int]
    display_index: tuple[int, int, int]
    value: float
    label: int
    text: str


def _number(value: float, integer: bool) -> str:
    text = f"{value:.0f}" if integer else f"{value:.4g}"
    return text.replace("-", MINUS)


class CursorReadout(QLabel):
    """Permanent status-bar label showing the voxel under the mouse (see the module doc)."""

    def __init__(self, window) -> None:
        super().__init__("")
        self._controller = window.controller
        self._viewer = window.viewer
        self.sample: CursorSample | None = None
        self.setMinimumWidth(320)
        self.setToolTip("Voxel under the mouse: index in the scan file (x, y, z), scan value, label")
        window.qt_window.statusBar().addPermanentWidget(self)
        self._viewer.cursor.events.position.connect(self._on_cursor)
        self._controller.volume_changed.connect(lambda _volume: self.clear_sample())
        self._controller.add_shutdown_hook(self._disconnect)

    def _disconnect(self) -> None:
        self._viewer.cursor.events.position.disconnect(self._on_cursor)

    def _on_cursor(self, _event=None) -> None:
        layer = self._controller.image_layer
        if layer is None or self._viewer.dims.ndisplay != 2:
            self.clear_sample()
            return
        self.show_display_point(layer.world_to_data(self._viewer.cursor.position))

    def clear_sample(self) -> None:
        self.sample = None
        self.setText("")

    def show_display_point(self, display_point) -> CursorSample | None:
        """Show the voxel nearest ``display_point`` (display coordinates, floats); clears the
        readout outside the scan. Returns what is shown."""
        c = self._controller
        volume, orientation = c.volume, c.orientation
        if volume is None or c.labels_layer is None:
            self.clear_sample()
            return None
        labels = c.labels_layer.data
        display_index = nearest_display_index(display_point, labels.shape)
        if display_index is None:
            self.clear_sample()
            return None
        ijk = source_voxel(orientation, display_index, volume.shape)
        if ijk is None:  # the layers are being replaced (a new scan)
            self.clear_sample()
            return None
        i, j, k = ijk
        value = float(volume.array[k, j, i])
        label = int(labels[display_index])
        unit = " HU" if volume.modality == "CT" else ""
        text = f"x {i} y {j} z {k} · {_number(value, np.issubdtype(volume.array.dtype, np.integer))}{unit}"
        if label:
            info = c.label_table.get(label)
            text += f" · label {label}" + (f" ({info.name})" if info is not None and info.name else "")
        else:
            text += " · no label"
        self.sample = CursorSample(ijk, display_index, value, label, text)
        self.setText(text)
        return self.sample
