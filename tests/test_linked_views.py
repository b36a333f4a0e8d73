"""Three linked views (View > Three views, Ctrl+4): the main canvas plus coronal and sagittal
panes sharing a crosshair, on the demo CT (RAS-stored: display columns and rows are flipped
against the file) with its labels, driven through the real window (keys, clicks, wheel)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, QPointF, Qt
from qtpy.QtGui import QImage, QKeySequence, QWheelEvent
from qtpy.QtWidgets import QApplication

from medsam_gui.core.volume import Volume
from medsam_gui.gui.linked_views_pane import CROSSHAIR_RGB

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def win(module_app_window, demo_scan, demo_labels):
    w = module_app_window(str(demo_scan), labels=str(demo_labels), show=True, install_panels=False,
                          size=(1400, 900))
    w.viewer.canvas.overlays.scale_bar.visible = False
    return w


@pytest.fixture
def linked(win, qtbot):
    lv = win.linked_views
    lv.set_enabled(True)
    qtbot.waitUntil(lambda: lv.panes[0].screen_rgb() is not None, timeout=3000)
    yield lv
    if win.controller.view != "axial":
        win.controller.set_view("axial")
    lv.set_enabled(False)


def _pane(lv, view):
    return next(p for p in lv.panes if p.view == view)


def _settle(lv):
    """Let the throttled redraw run."""
    lv.refresh()
    QApplication.processEvents()


def _windowed(values, bounds):
    lo, hi = bounds
    return np.rint(np.clip((values.astype(np.float64) - lo) * 255.0 / (hi - lo), 0, 255)).astype(int)


def _cyan(rgb):
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (abs(r - CROSSHAIR_RGB[0]) < 40) & (abs(g - CROSSHAIR_RGB[1]) < 40) & (abs(b - CROSSHAIR_RGB[2]) < 40)


def _grab(widget) -> np.ndarray:
    """The widget as drawn on screen: uint8 (h, w, 3)."""
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    h, w = img.height(), img.width()
    bits = img.constBits()
    bits.setsize(img.sizeInBytes())
    return np.frombuffer(bits, np.uint8).reshape(h, img.bytesPerLine())[:, :3 * w].reshape(h, w, 3).copy()


def test_ctrl4_switches_between_one_and_three_views(win, qtbot):
    act = win.actions["three_views"]
    assert act in win.menu("view").actions() and act.isCheckable()
    key = QKeySequence("Ctrl+4")
    assert act.shortcut() == key
    others = [a for a in win.qt_window.findChildren(type(act)) if a is not act and a.shortcut() == key]
    assert others == []  # no other action of ours or napari's answers Ctrl+4
    lv = win.linked_views
    full_width = win.qt_viewer.width()
    win.qt_window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is win.qt_window, timeout=3000)
    labels_layer = win.controller.labels_layer
    win.viewer.layers.selection.active = labels_layer
    mode = labels_layer.mode
    qtbot.keyClick(win.qt_viewer.canvas.native, Qt.Key.Key_4, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: lv.container.isVisible() and lv.crosshair.segments is not None, timeout=3000)
    assert act.isChecked() and lv.enabled and labels_layer.mode == mode  # not napari's key "4"
    assert [p.view for p in lv.panes] == ["coronal", "sagittal"]
    qtbot.waitUntil(lambda: win.qt_viewer.width() < 0.8 * full_width, timeout=3000)
    shot = win.viewer.screenshot(canvas_only=True, flash=False)
    assert _cyan(shot[..., :3]).sum() > 100  # the crosshair is drawn on the main canvas
    qtbot.keyClick(win.qt_viewer.canvas.native, Qt.Key.Key_4, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: not lv.container.isVisible(), timeout=3000)
    assert not act.isChecked() and lv.crosshair.segments is None
    shot = win.viewer.screenshot(canvas_only=True, flash=False)
    assert _cyan(shot[..., :3]).sum() == 0


def test_panes_show_the_orthogonal_slices_radiologically(win, linked):
    c = win.controller
    disp = c.display_volume()
    nz, ny, nx = disp.shape
    linked.move_to((12, 40, 70))
    _settle(linked)
    labels = c.display_labels()
    bounds = c.window_bounds
    cor = _pane(linked, "coronal").screen_rgb()
    # coronal: superior up (top row = last display slice), patient right on the left (column 0)
    expected = _windowed(disp[::-1, 40, :], bounds)
    free = labels[::-1, 40, :] == 0
    assert cor.shape[:2] == (nz, nx) and free.sum() > 100
    assert np.array_equal(cor[..., 1][free], expected[free])
    assert not np.array_equal(cor[..., 0][~free], cor[..., 1][~free])  # labels are drawn in colour
    sag = _pane(linked, "sagittal").screen_rgb()
    # sagittal: superior up, anterior (display row 0) on the left
    expected = _windowed(disp[::-1, :, 70], bounds)
    free = labels[::-1, :, 70] == 0
    assert sag.shape[:2] == (nz, ny)
    assert np.array_equal(sag[..., 1][free], expected[free])
    # physical proportions: 3 mm slices, 3 mm pixels in this scan
    sz, sy, sx = (float(s) for s in c.image_layer.scale)
    rect = _pane(linked, "coronal").image_rect()
    assert rect.width() / rect.height() == pytest.approx((nx * sx) / (nz * sz), rel=0.02)


def test_click_and_wheel_in_a_pane_move_the_main_slice_and_the_crosshair(win, linked, qtbot):
    c = win.controller
    linked.move_to((15, 50, 61))
    _settle(linked)
    cor = _pane(linked, "coronal")
    target = (22, 50, 30)  # superior part, patient right
    pos = cor.widget_pos(target)
    qtbot.mouseClick(cor, Qt.MouseButton.LeftButton, pos=QPoint(round(pos.x()), round(pos.y())))
    assert linked.point == [22, 50, 30]
    assert c.current_slice(0) == 22  # the main (axial) view moved to the clicked slice
    _settle(linked)
    sag = _pane(linked, "sagittal")
    disp, labels = c.display_volume(), c.display_labels()
    free = labels[::-1, :, 30] == 0
    assert np.array_equal(sag.screen_rgb()[..., 1][free], _windowed(disp[::-1, :, 30], c.window_bounds)[free])
    # the crosshair on the main canvas: its vertical segment at column 30, horizontal at row 50
    scale, translate = c.image_layer.scale, c.image_layer.translate
    seg = linked.crosshair.segments
    assert seg[2, 0] == pytest.approx(30 * scale[2] + translate[2])
    assert seg[0, 1] == pytest.approx(50 * scale[1] + translate[1])
    # drawn where the pane says: one cyan row and column through the clicked point
    grabbed = _grab(cor)
    cyan = _cyan(grabbed)
    rows = np.nonzero(cyan.sum(axis=1) > 0.5 * cor.image_rect().width())[0]
    assert abs(rows.mean() - pos.y()) <= 2
    # the wheel over the sagittal pane steps its slice (display column) by one
    spos = sag.widget_pos(linked.point)
    ev = QWheelEvent(QPointF(spos), QPointF(sag.mapToGlobal(spos.toPoint())), QPoint(0, 0), QPoint(0, 120),
                     Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(sag, ev)
    assert linked.point == [22, 50, 31]


def test_the_main_slider_and_main_canvas_clicks_move_the_crosshair(win, linked, qtbot):
    c = win.controller
    c.set_current_slice(0, 7)
    qtbot.waitUntil(lambda: linked.point[0] == 7, timeout=2000)
    _settle(linked)
    cor = _pane(linked, "coronal")
    rows = np.nonzero(_cyan(_grab(cor)).sum(axis=1) > 0.5 * cor.image_rect().width())[0]
    assert abs(rows.mean() - cor.widget_pos(linked.point).y()) <= 2
    # a click on the main canvas puts the crosshair on the voxel under the mouse
    canvas = win.qt_viewer.canvas.native
    win.viewer.layers.selection.active = c.labels_layer  # pan/zoom mode: a click paints nothing
    before = c.display_labels().copy()
    pos = QPoint(canvas.width() // 2 + 40, canvas.height() // 2 - 30)
    qtbot.mouseMove(canvas, pos)
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=pos)
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=pos)
    under = np.rint(c.image_layer.world_to_data(win.viewer.cursor.position)).astype(int)
    assert linked.point == [7, int(under[1]), int(under[2])]
    assert linked.point[1:] != [50, 61]
    assert np.array_equal(before, c.display_labels())
    _settle(linked)
    assert _pane(linked, "sagittal").screen_rgb() is not None


def test_label_edits_and_view_switch_reach_the_panes(win, linked, qtbot):
    c = win.controller
    labels = c.display_labels()
    z = 15
    # an empty square of the axial slice (outside the body) gets the active label
    y, x = 5, 5
    assert labels[z, :10, :10].max() == 0
    linked.move_to((z, y, x))
    _settle(linked)
    cor = _pane(linked, "coronal")
    row = cor.screen_rgb().shape[0] - 1 - z
    assert (cor.screen_rgb()[row, 2:8, 0] == cor.screen_rgb()[row, 2:8, 1]).all()  # gray before
    mask = np.zeros(labels.shape[1:], bool)
    mask[2:9, 2:9] = True
    c.write_slice_mask(0, z, mask, c.active_label)
    qtbot.waitUntil(lambda: (cor.screen_rgb()[row, 2:8, 0] != cor.screen_rgb()[row, 2:8, 1]).all(), timeout=2000)
    c.undo()
    # hiding the labels layer (its eye in the layer list) hides them in the panes too
    c.labels_layer.visible = False
    qtbot.waitUntil(lambda: np.array_equal(cor.screen_rgb()[..., 0], cor.screen_rgb()[..., 1]), timeout=2000)
    c.labels_layer.visible = True
    # Ctrl+2: the main view goes coronal (at the crosshair's coronal slice), the panes show the others
    c.set_view("coronal")
    assert [p.view for p in linked.panes] == ["axial", "sagittal"]
    assert c.current_slice(1) == y
    assert linked.crosshair.segments is not None


def test_oblique_scan_panes_in_voxel_order(win, linked, qtbot):
    c = win.controller
    a = np.deg2rad(40)  # rotated 40 degrees about z: oblique, shown in voxel order
    direction = (np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a), 0, 0, 0, 1)
    arr = np.arange(6 * 8 * 10, dtype=np.int16).reshape(6, 8, 10)
    c.set_volume(Volume(arr, spacing=(1.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0), direction=direction,
                        modality="CT", name="oblique"))
    assert c.orientation.oblique
    linked.move_to((3, 4, 5))
    _settle(linked)
    cor = _pane(linked, "coronal").screen_rgb()
    # voxel order: rows = array z growing downwards, columns = array x growing rightwards
    assert np.array_equal(cor[..., 1], _windowed(arr[:, 4, :], c.window_bounds))
    assert _pane(linked, "sagittal").screen_rgb().shape[:2] == (6, 8)
