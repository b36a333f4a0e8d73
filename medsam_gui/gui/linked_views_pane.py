"""One pane of the linked views: an orthogonal slice of the scan with its labels and the
crosshair, drawn with QPainter (no extra napari viewer or GL canvas: cheap to keep updated).

A pane shows one named view ("axial", "coronal", "sagittal") the way the main view shows it
(:func:`medsam_gui.gui.layers.view_spec`: same screen orientation and edge letters) in
physical proportions. Coordinates: display axes 0, 1, 2 (see
:mod:`medsam_gui.core.orientation`); the pane's slice axis is ``spec.order[0]``, its screen
rows show display axis ``spec.order[1]`` and its columns ``spec.order[2]``.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, Signal
from qtpy.QtGui import QColor, QImage, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from ..core.labels import LabelTable

CROSSHAIR_RGB = (0, 229, 255)
LETTER_COLOR = QColor(255, 217, 51)
_MARGIN = 16  # px around the image for the edge letters


def render_plane(scan2d: np.ndarray, labels2d: np.ndarray, bounds: tuple[float, float],
                 table: LabelTable, opacity: float) -> np.ndarray:
    """RGB uint8 (h, w, 3) of a scan slice shown with window ``bounds`` (lo, hi, scan units)
    and its labels blended on top (label colours of ``table``, hidden labels left out,
    ``opacity`` times the colour's alpha). ``scan2d`` and ``labels2d`` have the same (h, w)."""
    lo, hi = bounds
    gray = np.clip((np.asarray(scan2d, dtype=np.float32) - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for value in np.unique(labels2d):
        if value == 0:
            continue
        info = table.get(int(value))
        if info is not None and not info.visible:
            continue
        color = np.asarray(table.color_of(int(value)), dtype=np.float32)
        alpha = float(color[3]) * float(opacity)
        where = labels2d == value
        rgb[where] = rgb[where] * (1.0 - alpha) + color[:3] * 255.0 * alpha
    return np.ascontiguousarray(np.rint(rgb), dtype=np.uint8)


class SlicePane(QWidget):
    """An orthogonal slice view with a crosshair.

    Signals: ``clicked(object)``: the display point (3 floats) the user clicked or dragged to;
    ``hovered(object)``: the display point under the mouse; ``stepped(int)``: wheel steps
    (+1 / -1) along the pane's slice axis.
    """

    clicked = Signal(object)
    hovered = Signal(object)
    stepped = Signal(int)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setMinimumSize(160, 140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.view = ""
        self.axes = (0, 1, 2)  # (slice axis, row axis, column axis) in display axes
        self._flip_rows = False
        self._flip_cols = False
        self._edges = ("", "", "", "")
        self._approximate = False
        self._rgb: np.ndarray | None = None  # screen-oriented (rows, cols, 3)
        self._image: QImage | None = None
        self._spacing = (1.0, 1.0)  # mm per screen row, per screen column
        self._point = np.zeros(3)
        self._shape = (1, 1, 1)

    # ------------------------------------------------------------------ content
    def set_view(self, spec) -> None:
        """Show the named view of a :class:`~medsam_gui.gui.layers.ViewSpec` (order, camera, letters)."""
        self.view = spec.name
        self.axes = tuple(spec.order)
        self._flip_rows = spec.camera[0] == "up"
        self._flip_cols = spec.camera[1] == "left"
        self._edges = spec.edges
        self._approximate = spec.approximate
        self.setToolTip(f"{spec.name.capitalize()} view: click or drag to move the crosshair, scroll to change slice")

    def set_content(self, rgb: np.ndarray, spacing: tuple[float, float], point, shape) -> None:
        """The rendered slice ``rgb`` (rows = display axis ``axes[1]``, columns = ``axes[2]``,
        uint8 (h, w, 3)), its pixel size in mm (row, column), the crosshair point (display
        coordinates) and the display shape."""
        if self._flip_rows:
            rgb = rgb[::-1]
        if self._flip_cols:
            rgb = rgb[:, ::-1]
        self._rgb = np.ascontiguousarray(rgb)
        h, w = self._rgb.shape[:2]
        self._image = QImage(self._rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
        self._spacing = (float(spacing[0]), float(spacing[1]))
        self._point = np.asarray(point, dtype=float)
        self._shape = tuple(int(s) for s in shape)
        self.update()

    def screen_rgb(self) -> np.ndarray | None:
        """The slice as drawn (screen orientation, before scaling): uint8 (rows, cols, 3)."""
        return self._rgb

    # ------------------------------------------------------------------ geometry
    def image_rect(self) -> QRectF:
        """Where the slice is drawn in the widget: centred, in physical proportions."""
        if self._rgb is None:
            return QRectF()
        h, w = self._rgb.shape[:2]
        height_mm, width_mm = h * self._spacing[0], w * self._spacing[1]
        avail_w = max(self.width() - 2 * _MARGIN, 1)
        avail_h = max(self.height() - 2 * _MARGIN, 1)
        zoom = min(avail_w / width_mm, avail_h / height_mm)
        dw, dh = width_mm * zoom, height_mm * zoom
        return QRectF((self.width() - dw) / 2.0, (self.height() - dh) / 2.0, dw, dh)

    def _screen_fraction(self, d: int, value: float) -> float:
        """Position (0..1 across the image) of display coordinate ``value`` along the pane's
        row (d = 1) or column (d = 2) axis, voxel centres at (index + 0.5) / n."""
        n = self._shape[self.axes[d]]
        frac = (value + 0.5) / n
        flip = self._flip_rows if d == 1 else self._flip_cols
        return 1.0 - frac if flip else frac

    def widget_pos(self, display_point) -> QPointF:
        """Widget position of a display point's in-plane coordinates."""
        r = self.image_rect()
        p = np.asarray(display_point, dtype=float)
        return QPointF(r.left() + self._screen_fraction(2, p[self.axes[2]]) * r.width(),
                       r.top() + self._screen_fraction(1, p[self.axes[1]]) * r.height())

    def display_point_at(self, pos: QPointF) -> np.ndarray | None:
        """Display coordinates under widget position ``pos`` (the slice axis keeps the pane's
        slice), or None outside the image."""
        r = self.image_rect()
        if r.isEmpty() or not r.contains(pos):
            return None
        point = self._point.copy()
        for d, frac in ((1, (pos.y() - r.top()) / r.height()), (2, (pos.x() - r.left()) / r.width())):
            flip = self._flip_rows if d == 1 else self._flip_cols
            frac = 1.0 - frac if flip else frac
            n = self._shape[self.axes[d]]
            point[self.axes[d]] = min(max(frac * n - 0.5, 0.0), n - 1.0)
        return point

    # ------------------------------------------------------------------ painting
    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt naming
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(0, 0, 0))
        if self._image is None:
            p.end()
            return
        r = self.image_rect()
        p.drawImage(r, self._image)
        pen = QPen(QColor(*CROSSHAIR_RGB))
        pen.setWidth(1)
        p.setPen(pen)
        c = self.widget_pos(self._point)
        p.drawLine(QPointF(r.left(), c.y()), QPointF(r.right(), c.y()))
        p.drawLine(QPointF(c.x(), r.top()), QPointF(c.x(), r.bottom()))
        p.setPen(LETTER_COLOR)
        prefix = "≈" if self._approximate else ""
        top, bottom, left, right = (f"{prefix}{e}" if e and e != "?" else "" for e in self._edges)
        full = QRectF(self.rect())
        p.drawText(full.adjusted(0, 1, 0, 0), Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, top)
        p.drawText(full.adjusted(0, 0, 0, -1), Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom, bottom)
        p.drawText(full.adjusted(3, 0, 0, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, left)
        p.drawText(full.adjusted(0, 0, -3, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, right)
        s = self.axes[0]  # slice index and last index, as napari's slider shows them
        p.setPen(QColor(230, 230, 230))
        p.drawText(full.adjusted(4, 1, 0, 0), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop,
                   f"{self.view.capitalize()} {int(round(self._point[s]))} / {self._shape[s] - 1}")
        p.end()

    # ------------------------------------------------------------------ mouse
    def mousePressEvent(self, event) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton:
            point = self.display_point_at(event.position())
            if point is not None:
                self.clicked.emit(point)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        point = self.display_point_at(event.position())
        if point is None:
            return
        if event.buttons() & Qt.MouseButton.LeftButton:
            self.clicked.emit(point)
        self.hovered.emit(point)

    def wheelEvent(self, event) -> None:  # noqa: N802
        steps = event.angleDelta().y()
        if steps:
            self.stepped.emit(1 if steps > 0 else -1)
