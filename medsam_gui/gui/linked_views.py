"""Three linked views (as in ITK-SNAP and 3D Slicer): the main napari canvas plus two panes
showing the two other orthogonal views, all sharing one crosshair point.

View > "Three views (axial, coronal, sagittal)" (Ctrl+4) switches between the single large
view and this layout. The main canvas keeps its view (axial, coronal or sagittal, Ctrl+1..3);
the panes (:class:`~.linked_views_pane.SlicePane`, right of the canvas) show the other two.
The crosshair point (display voxel coordinates, see :mod:`medsam_gui.core.orientation`) moves
with a click on the main canvas (not with drags: those paint, draw boxes or pan) and with a
click or drag in a pane; the main view's slice follows the point and the point follows the
main view's slider. Panes redraw, throttled, on crosshair moves, label edits
(``labels_changed``), window/level, label table and labels layer opacity/visibility changes;
nothing runs while the layout is off.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..core.orientation import plane
from .layers import VIEW_ORDERS, view_spec
from .linked_views_crosshair import CanvasCrosshair, crosshair_segments
from .linked_views_pane import SlicePane, render_plane

REFRESH_MS = 30  # coalesce bursts of events (slider scrolls, paint strokes) into one redraw
ACTION_TEXT = "Three views (axial, coronal, sagittal)"
SHORTCUT = "Ctrl+4"


class LinkedViews(QObject):
    """The three-view layout of a :class:`~.main_window.MainWindow`.

    ``readout``: the window's :class:`~.cursor_readout.CursorReadout` (fed from the panes).
    Attributes: ``panes`` (two SlicePanes), ``container`` (their widget), ``action`` (the
    checkable View menu entry), ``crosshair`` (:class:`CanvasCrosshair` on the main canvas),
    ``point`` (display coordinates of the crosshair: 3 ints, or None without a scan).
    """

    def __init__(self, window, readout) -> None:
        super().__init__(window.qt_window)
        self._controller = c = window.controller
        self._viewer = window.viewer
        self.enabled = False
        self.point: list[int] | None = None
        self._watched_labels = None  # the labels layer whose opacity/visibility the panes follow
        self.panes = [SlicePane(), SlicePane()]
        self.container = QWidget()
        self.container.setObjectName("medsam_linked_views")
        layout = QVBoxLayout(self.container)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        for pane in self.panes:
            layout.addWidget(pane)
            pane.clicked.connect(self.move_to)
            pane.hovered.connect(readout.show_display_point)
            pane.stepped.connect(lambda step, p=pane: self._step(p, step))
        center = window.qt_window.centralWidget().layout()
        center.addWidget(self.container, 2)
        center.setStretchFactor(window.qt_viewer, 3)
        self.container.setVisible(False)
        self.crosshair = CanvasCrosshair(window.qt_viewer)
        self.action = window.add_action(
            "view", "three_views", ACTION_TEXT, lambda: self.set_enabled(self.action.isChecked()),
            shortcut=SHORTCUT, after="view_sagittal", separator_before=True,
            tip="Show the axial, coronal and sagittal views side by side with a linked crosshair")
        self.action.setCheckable(True)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.refresh)
        self._fit_timer = QTimer(self)  # fit the main view to its new size once the layout has changed
        self._fit_timer.setSingleShot(True)
        self._fit_timer.setInterval(0)
        self._fit_timer.timeout.connect(self._viewer.reset_view)
        c.volume_changed.connect(self._on_volume)
        c.view_changed.connect(self._on_view)
        for signal in (c.labels_changed, c.label_table_changed):
            signal.connect(self.schedule)
        c.window_changed.connect(lambda _lo, _hi: self.schedule())
        self._viewer.dims.events.point.connect(self._on_dims_point)
        self._viewer.mouse_drag_callbacks.append(self._on_main_press)
        c.add_shutdown_hook(self._disconnect)

    def _disconnect(self) -> None:
        self._timer.stop()
        self._fit_timer.stop()
        self._viewer.dims.events.point.disconnect(self._on_dims_point)
        if self._on_main_press in self._viewer.mouse_drag_callbacks:
            self._viewer.mouse_drag_callbacks.remove(self._on_main_press)

    # ------------------------------------------------------------------ switching
    def set_enabled(self, on: bool) -> None:
        """Show the three-view layout (True) or the single large view (False)."""
        self.enabled = bool(on)
        self.action.setChecked(self.enabled)
        self.container.setVisible(self.enabled)
        self._fit_timer.start()
        if not self.enabled:
            self._timer.stop()
            self.crosshair.hide()
            return
        if self._controller.volume is not None:
            self._sync_main_slice()
            self._assign_panes()
        self.refresh()

    # ------------------------------------------------------------------ the crosshair point
    def move_to(self, display_point) -> None:
        """Put the crosshair at ``display_point`` (display coordinates, rounded to the nearest
        voxel, clamped to the scan) and move the main view to its slice."""
        c = self._controller
        if c.volume is None:
            return
        shape = c.image_layer.data.shape
        self.point = [int(min(max(round(float(v)), 0), n - 1)) for v, n in zip(display_point, shape)]
        axis = c.view_axis
        if c.current_slice(axis) != self.point[axis]:
            c.set_current_slice(axis, self.point[axis])
        self.schedule()

    def _step(self, pane: SlicePane, step: int) -> None:
        if self.point is None:
            return
        point = list(self.point)
        point[pane.axes[0]] += step
        self.move_to(point)

    def _sync_main_slice(self) -> None:
        """The point follows the main view's slider."""
        axis = self._controller.view_axis
        self.point[axis] = self._controller.current_slice(axis)

    def _on_volume(self, _volume) -> None:
        labels = self._controller.labels_layer
        if labels is not self._watched_labels:  # the controller re-uses its layers for a new scan
            labels.events.opacity.connect(self._on_layer_event)
            labels.events.visible.connect(self._on_layer_event)
            self._watched_labels = labels
        shape = self._controller.image_layer.data.shape
        self.point = [n // 2 for n in shape]
        if self.enabled:
            self._sync_main_slice()
            self._assign_panes()
            self.schedule()

    def _on_view(self, _view: str) -> None:
        if not self.enabled or self.point is None:
            return
        axis = self._controller.view_axis  # the new view opens at the crosshair's slice
        if self._controller.current_slice(axis) != self.point[axis]:
            self._controller.set_current_slice(axis, self.point[axis])
        self._assign_panes()
        self.schedule()

    def _on_layer_event(self, _event=None) -> None:
        self.schedule()

    def _on_dims_point(self, _event=None) -> None:
        if not self.enabled or self.point is None or self._controller.image_layer is None:
            return
        self._sync_main_slice()
        self.schedule()

    def _on_main_press(self, _viewer, event):
        """napari drag callback: a click (press and release without a drag) on the main
        canvas moves the crosshair there."""
        if not self.enabled or self._controller.image_layer is None:
            return
        position = event.position
        yield
        dragged = False
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged and self._viewer.dims.ndisplay == 2:
            point = self._controller.image_layer.world_to_data(position)
            axis = self._controller.view_axis
            point = list(point)
            point[axis] = self._controller.current_slice(axis)
            self.move_to(point)

    # ------------------------------------------------------------------ drawing
    def schedule(self) -> None:
        """Redraw the panes and the canvas crosshair soon (bursts of events make one redraw)."""
        if self.enabled and not self._timer.isActive():
            self._timer.start()

    def _assign_panes(self) -> None:
        orientation = self._controller.orientation
        others = [v for v in VIEW_ORDERS if v != self._controller.view]
        for pane, view in zip(self.panes, others):
            pane.set_view(view_spec(view, orientation))

    def refresh(self) -> None:
        """Redraw the panes and the crosshair now."""
        self._timer.stop()
        c = self._controller
        if not self.enabled or c.volume is None or self.point is None:
            self.crosshair.hide()
            return
        image, labels = c.image_layer, c.labels_layer
        scan, lab = np.asarray(image.data), np.asarray(labels.data)
        scale = tuple(float(s) for s in image.scale)
        for pane in self.panes:
            s, r, col = pane.axes
            rgb = render_plane(plane(scan, self.point[s], s), plane(lab, self.point[s], s),
                               c.window_bounds, c.label_table, labels.opacity if labels.visible else 0.0)
            pane.set_content(rgb, (scale[r], scale[col]), self.point, scan.shape)
        if self._viewer.dims.ndisplay == 2:
            self.crosshair.show(crosshair_segments(self.point, VIEW_ORDERS[c.view], scan.shape, scale,
                                                   tuple(image.translate)))
        else:
            self.crosshair.hide()
