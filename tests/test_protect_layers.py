"""The scan and labels layers cannot be deleted by accident (napari's delete keys, the layer
list's bin button); a labels layer deleted on purpose is replaced by an empty one, so that
undo and save never work on a layer that is gone."""

from __future__ import annotations

import napari
import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers.base import LayerLock
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QApplication, QMessageBox

pytestmark = pytest.mark.gui

CTRL = Qt.KeyboardModifier.ControlModifier


@pytest.fixture(scope="module")
def win(module_app_window):
    window = module_app_window(demo=True, show=True, install_panels=False)
    c = window.controller
    mask = np.zeros(c.display_labels().shape[1:], dtype=bool)
    mask[40:60, 50:70] = True
    c.write_slice_mask(0, 15, mask, 1)
    return window


def _press(win, qtbot, key):
    canvas = win.qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, key, CTRL)
    QApplication.processEvents()


def _select(win, layer):
    win.viewer.layers.selection.active = layer


def _answer_next_question(button: QMessageBox.StandardButton, tries: int = 200) -> list:
    """Click ``button`` on the next modal message box (polls the event loop until it opens)."""
    asked: list[str] = []

    def click(left=tries):
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            asked.append(box.text())
            box.button(button).click()
        elif left:
            QTimer.singleShot(10, lambda: click(left - 1))

    QTimer.singleShot(0, click)
    return asked


def _toggle_lock(win, layer) -> None:
    """The layer list's context menu entry "Toggle lock" (napari's command) on ``layer`` alone."""
    from napari._app_model import get_app_model

    _select(win, layer)
    assert napari.current_viewer() is win.viewer
    get_app_model().commands.execute_command("napari.layer.toggle_lock").result()
    QApplication.processEvents()


def test_delete_keys_keep_scan_and_labels(win, qtbot):
    c = win.controller
    image, labels = c.image_layer, c.labels_layer
    voxels = int(np.count_nonzero(labels.data))
    assert voxels == 400
    for key in (Qt.Key.Key_Backspace, Qt.Key.Key_Delete):
        _select(win, labels)
        _press(win, qtbot, key)
        assert list(win.viewer.layers) == [image, labels]
        assert "labels layer was not deleted" in win.status_text()
    _select(win, image)
    _press(win, qtbot, Qt.Key.Key_Backspace)
    assert list(win.viewer.layers) == [image, labels]
    assert "scan layer was not deleted" in win.status_text()
    # other layers still go: the selection's unprotected layers are deleted, the labels stay
    extra = win.viewer.add_points(np.zeros((1, 3)), name="extra points")
    win.viewer.layers.selection.update({extra, labels})
    _press(win, qtbot, Qt.Key.Key_Backspace)
    assert list(win.viewer.layers) == [image, labels]
    # Delete in the layer list itself (napari's own refusal of locked layers)
    _select(win, labels)
    qtbot.keyClick(win.qt_viewer.layers, Qt.Key.Key_Delete)
    assert list(win.viewer.layers) == [image, labels]
    assert int(np.count_nonzero(labels.data)) == voxels


def test_bin_button_keeps_labels(win, qtbot):
    c = win.controller
    image, labels = c.image_layer, c.labels_layer
    _select(win, labels)
    qtbot.mouseClick(win.qt_viewer.layerButtons.deleteButton, Qt.MouseButton.LeftButton)
    QApplication.processEvents()
    assert list(win.viewer.layers) == [image, labels]
    assert "labels layer was not deleted" in win.status_text()
    assert labels.locked & LayerLock.DELETION


def test_scan_lock_closes_again(win):
    image = win.controller.image_layer
    _toggle_lock(win, image)
    assert image.locked & LayerLock.DELETION
    assert "scan layer stays locked" in win.status_text()


def test_unlocking_labels_asks_and_no_keeps_it_locked(win):
    labels = win.controller.labels_layer
    asked = _answer_next_question(QMessageBox.StandardButton.No)
    _toggle_lock(win, labels)
    assert asked and "400 labelled voxels" in asked[0]
    assert labels.locked & LayerLock.DELETION


def test_confirmed_deletion_leaves_undo_and_save_on_a_new_layer(win, qtbot, tmp_path):
    c = win.controller
    saved = c.save_labels(tmp_path / "before.nii.gz")
    old = c.labels_layer
    before = old.data.copy()
    _answer_next_question(QMessageBox.StandardButton.Yes)
    _toggle_lock(win, old)
    assert not old.locked & LayerLock.DELETION
    _select(win, old)
    qtbot.mouseClick(win.qt_viewer.layerButtons.deleteButton, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: c.labels_layer is not old, timeout=2000)
    new = c.labels_layer
    assert new in win.viewer.layers and old not in win.viewer.layers
    assert new.locked & LayerLock.DELETION
    assert new.data.shape == before.shape and not new.data.any()
    assert c.labels_path is None and not c.has_unsaved_labels()
    assert np.shares_memory(c.source_labels(), new.data)  # what autosave and Save read
    assert "empty labels layer took its place" in win.status_text()
    # Ctrl+Z touches neither the deleted layer nor the new one
    _select(win, new)
    _press(win, qtbot, Qt.Key.Key_Z)
    c.undo()
    assert np.array_equal(old.data, before) and not new.data.any()
    # the app writes to the new layer; Save writes it, the old file keeps its labels
    mask = np.zeros(before.shape[1:], dtype=bool)
    mask[10:20, 10:20] = True
    assert c.write_slice_mask(0, 5, mask, 1) == 100
    out = c.save_labels(tmp_path / "after.nii.gz")
    assert int(np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))) == 100
    assert int(np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(saved))))) == 400
    c.undo()
    assert not new.data.any()
