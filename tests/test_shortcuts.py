"""Keys of the real window: B draws boxes, Ctrl+Z / Ctrl+Y undo and redo (never napari's 3D),
F1 lists every live key, the 3D view only from View > 3D view."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt
from qtpy.QtWidgets import QApplication

pytestmark = pytest.mark.gui


def _box_segmenter(_index, box):
    """Fills the box (x0, y0, x1, y1) on a slice of the demo's axial size (101 x 122)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask = np.zeros((101, 122), bool)
    mask[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
    return mask


@pytest.fixture(scope="module")
def window(module_app_window):
    w = module_app_window(demo=True, size=(1300, 850))
    w.panels.medsam.set_segmenter(_box_segmenter)
    w.qt_window.activateWindow()
    return w


def _canvas(window):
    return window.qt_viewer.canvas.native


def _key(qtbot, window, key, modifier=Qt.KeyboardModifier.NoModifier):
    window.qt_window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window.qt_window, timeout=3000)
    canvas = _canvas(window)
    canvas.setFocus()
    qtbot.keyClick(canvas, key, modifier)


def _drag(qtbot, widget, start: QPoint, end: QPoint) -> None:
    """A mouse drag; vispy drops moves less than 10 ms apart, hence the waits."""
    qtbot.mousePress(widget, Qt.MouseButton.LeftButton, pos=start)
    for t in np.linspace(0.2, 1.0, 5):
        qtbot.wait(15)
        qtbot.mouseMove(widget, QPoint(int(start.x() + t * (end.x() - start.x())),
                                       int(start.y() + t * (end.y() - start.y()))))
    qtbot.mouseRelease(widget, Qt.MouseButton.LeftButton, pos=end)


def test_b_then_drag_draws_a_box_and_ctrl_y_redoes_it(window, qtbot):
    c = window.controller
    medsam = window.panels.medsam
    labels = c.labels_layer
    before = np.asarray(labels.data).copy()
    _key(qtbot, window, Qt.Key.Key_B)
    assert medsam.box_button.isChecked()
    assert medsam.prompts_layer.mode == "add_rectangle"
    canvas = _canvas(window)
    centre = canvas.rect().center()
    _drag(qtbot, canvas, centre - QPoint(60, 40), centre + QPoint(60, 40))
    qtbot.waitUntil(lambda: np.count_nonzero(np.asarray(labels.data) != before) > 0, timeout=10000)
    assert len(medsam.prompts_layer.data) == 1
    assert medsam.prompts_layer.shape_type[0] == "rectangle"
    painted = np.asarray(labels.data).copy()
    changed = np.count_nonzero(painted != before)

    _key(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: np.array_equal(np.asarray(labels.data), before), timeout=3000)
    _key(qtbot, window, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: np.array_equal(np.asarray(labels.data), painted), timeout=3000)
    # the drag made a 3:2 box (120 x 80 screen pixels), painted whole
    corners = np.asarray(medsam.prompts_layer.data[0])[:, 1:]
    height, width = np.ptp(corners, axis=0)
    assert width / height == pytest.approx(1.5, rel=0.1)
    assert changed == pytest.approx(width * height, rel=0.2)
    assert window.viewer.dims.ndisplay == 2


def test_r_selects_the_recist_tool_and_3d_needs_the_view_menu(window, qtbot):
    medsam = window.panels.medsam
    _key(qtbot, window, Qt.Key.Key_R)
    assert medsam.recist_button.isChecked() and not medsam.box_button.isChecked()
    assert medsam.prompts_layer.mode == "add_line"
    _key(qtbot, window, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    assert window.viewer.dims.ndisplay == 2
    assert window.qt_viewer.viewerButtons.ndisplayButton.isHidden()  # napari's 2D/3D button said "Ctrl+Y"
    window.actions["view_3d"].trigger()
    assert window.viewer.dims.ndisplay == 3 and window.actions["view_3d"].isChecked()
    window.actions["view_3d"].trigger()
    assert window.viewer.dims.ndisplay == 2 and not window.actions["view_3d"].isChecked()


def test_f1_lists_every_live_key(window, qtbot):
    _key(qtbot, window, Qt.Key.Key_F1)
    qtbot.waitUntil(lambda: window.shortcuts_dialog is not None and window.shortcuts_dialog.isVisible(),
                    timeout=3000)
    dialog = window.shortcuts_dialog
    assert dialog.actions_for("Ctrl+Y") == ["Redo label edit"]
    assert dialog.actions_for("Ctrl+Shift+Z") == ["Redo label edit"]
    assert dialog.actions_for("B") == ["Box tool"]
    assert dialog.actions_for("R") == ["RECIST tool"]
    # napari keys that still work are listed from its keymaps; those turned off are not
    assert "Increment dims left" in dialog.actions_for("Left")
    assert "Activate labels paint mode" in dialog.actions_for("P")
    assert dialog.actions_for("Ctrl+G") == []  # turned off
    # the scan and labels layers are kept (gui/layer_protection): the key deletes the other selected layers
    assert dialog.actions_for("Ctrl+Backspace") == ["Delete selected layers but scan and labels"]
    assert dialog.table.rowCount() == len(dialog.rows) > 60
    dialog.filter_edit.setText("redo")
    shown = [r for r in range(dialog.table.rowCount()) if not dialog.table.isRowHidden(r)]
    assert [dialog.table.item(r, 0).text() for r in shown] == ["Ctrl+Y", "Ctrl+Shift+Z"]
    dialog.close()


def test_actions_and_tool_buttons_have_icons_and_say_their_keys(window):
    from medsam_gui.gui.shortcuts import SHORTCUTS

    for name, action in window.actions.items():
        entry = SHORTCUTS.get(name)
        assert entry is not None, f"{name} is not in the shortcut registry"
        assert not action.icon().isNull(), name
        keys = [seq.toString() for seq in action.shortcuts()]
        assert keys == list(entry.keys), name
        tip = action.toolTip()
        assert len(tip) > 15, name
        if keys:
            assert tip.endswith(f"({', '.join(keys)})"), name
    assert window.actions["redo"].toolTip().endswith("(Ctrl+Y, Ctrl+Shift+Z)")
    every_key = [seq.toString() for a in window.actions.values() for seq in a.shortcuts()]
    assert len(every_key) == len(set(every_key))  # an ambiguous key would do nothing at all
    medsam = window.panels.medsam
    for button, key in ((medsam.box_button, "(B)"), (medsam.recist_button, "(R)"), (medsam.select_button, "(S)")):
        assert not button.icon().isNull() and button.toolTip().endswith(key)
    universeg = window.panels.universeg
    for button in (universeg.segment_button, universeg.accept_button, medsam.propagation_box.propagate_button):
        assert not button.icon().isNull()
    assert not window.tool_buttons["box_tool"].icon().isNull()
