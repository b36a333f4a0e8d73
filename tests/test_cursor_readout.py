"""The status-bar readout of the voxel under the mouse: the scan's value (HU for CT) and its
voxel index in the file's own (i, j, k) order, whichever layer is selected. The demo CT is
stored RAS, so display rows and columns run against the file's j and i."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QEvent, QPoint, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication

from medsam_gui.core.orientation import DisplayOrientation, nearest_display_index, source_voxel
from medsam_gui.core.volume import Volume

pytestmark = pytest.mark.gui

MINUS = "\u2212"


@pytest.fixture(scope="module")
def win(module_app_window, demo_scan, demo_labels):
    return module_app_window(str(demo_scan), labels=str(demo_labels), show=True, install_panels=False,
                             size=(1300, 850))


def _world(c, display_index):
    return tuple(float(i) * float(s) + float(t)
                 for i, s, t in zip(display_index, c.image_layer.scale, c.image_layer.translate))


def test_labels_layer_selected_still_shows_the_scan_value_and_file_index(win):
    c, viewer = win.controller, win.viewer
    viewer.layers.selection.active = c.labels_layer
    readout = win.cursor_readout
    assert readout in win.qt_window.statusBar().findChildren(type(readout)) and readout.isVisible()
    labels = c.display_labels()
    nz, ny, nx = labels.shape
    z = c.current_slice(0)
    ys, xs = np.nonzero(labels[z] != 0)
    y, x = int(ys[len(ys) // 3]), int(xs[len(xs) // 3])
    viewer.cursor.position = _world(c, (z, y, x))  # what napari's canvas does on a mouse move
    sample = readout.sample
    vol = c.volume
    # the voxel shown there on screen, found in the file's own array: flipped rows and columns
    i, j, k = nx - 1 - x, ny - 1 - y, z
    assert sample.ijk == (i, j, k) and sample.ijk != (x, y, z)
    assert vol.array[k, j, i] == c.image_layer.data[z, y, x]
    value = int(vol.array[k, j, i])
    label = int(labels[z, y, x])
    name = c.label_table[label].name
    assert readout.text() == f"x {i} y {j} z {k} · {str(value).replace('-', MINUS)} HU · label {label} ({name})"
    # napari's own status line shows the labels layer's value only: ours is the scan's
    assert sample.value == value and sample.label == label


def test_real_mouse_moves_over_the_canvas_update_the_readout(win, qtbot):
    c = win.controller
    canvas = win.qt_viewer.canvas.native
    seen = []
    for dx, dy in ((0, 0), (37, -21), (-45, 33)):
        pos = QPoint(canvas.width() // 2 + dx, canvas.height() // 2 + dy)
        qtbot.mouseMove(canvas, QPoint(pos.x() + 9, pos.y() + 7))  # the pointer may already be at pos
        qtbot.mouseMove(canvas, pos)
        qtbot.waitUntil(lambda: win.cursor_readout.sample is not None
                        and win.cursor_readout.sample.display_index not in seen, timeout=10_000)
        sample = win.cursor_readout.sample
        under = tuple(int(v) for v in np.rint(c.image_layer.world_to_data(win.viewer.cursor.position)))
        assert sample.display_index == under
        i, j, k = sample.ijk
        assert sample.value == float(c.volume.array[k, j, i]) == float(c.image_layer.data[under])
        seen.append(sample.display_index)
    # outside the scan: nothing is shown
    win.viewer.cursor.position = _world(c, (c.current_slice(0), -40, -40))
    assert win.cursor_readout.text() == "" and win.cursor_readout.sample is None


def test_hovering_a_linked_pane_updates_the_readout(win, qtbot):
    lv = win.linked_views
    lv.set_enabled(True)
    try:
        pane = lv.panes[1]  # sagittal
        qtbot.waitUntil(lambda: pane.screen_rgb() is not None and pane.isVisible() and pane.height() > 200,
                        timeout=3000)
        qtbot.wait(50)  # the layout settles
        target = (20, 60, lv.point[2])
        pos = pane.widget_pos(target)
        move = QMouseEvent(QEvent.Type.MouseMove, pos, pane.mapToGlobal(pos), Qt.MouseButton.NoButton,
                           Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(pane, move)
        qtbot.waitUntil(lambda: win.cursor_readout.sample is not None
                        and win.cursor_readout.sample.display_index == target, timeout=2000)
        i, j, k = win.cursor_readout.sample.ijk
        assert win.cursor_readout.sample.value == float(win.controller.volume.array[k, j, i])
    finally:
        lv.set_enabled(False)


def test_mr_values_have_no_hu_unit(win, hippo):
    image, labels = hippo
    c = win.controller
    vol = Volume(np.array(image), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                 direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), modality="MR", name="hippocampus")
    c.set_volume(vol, labels=np.array(labels))
    z, y, x = 17, 30, 20
    win.viewer.cursor.position = _world(c, (z, y, x))
    text = win.cursor_readout.text()
    assert text.startswith(f"x {x} y {y} z {z} · {float(image[z, y, x]):.4g}")
    assert "HU" not in text


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (0, 0, -1, 1, 0, 0, 0, -1, 0)], ids=["lps", "ras", "sagittal"])
def test_source_voxel_is_the_file_index_of_the_displayed_voxel(direction):
    shape = (5, 6, 7)
    array = np.arange(np.prod(shape)).reshape(shape)  # every voxel holds its own flat index
    orientation = DisplayOrientation.from_direction(direction, shape)
    display = orientation.to_display(array)
    for point in [(0, 0, 0), tuple(n - 1 for n in display.shape), (1.2, 2.6, 3.4)]:
        d = nearest_display_index(point, display.shape)
        i, j, k = source_voxel(orientation, point)
        assert array[k, j, i] == display[d]
    assert source_voxel(orientation, (-1, 0, 0)) is None
    assert nearest_display_index((0, display.shape[1], 0), display.shape) is None
