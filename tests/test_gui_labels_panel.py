"""Labels panel widgets and the controller's label-editing hooks (write_slice_mask, edit_group)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = pytest.mark.gui

BRAIN = "itksnap_brain_mr/MRIcrop-orig.nii.gz"
BRAIN_SEG = "itksnap_brain_mr/MRIcrop-seg.nii.gz"
BRAIN_DESC = "itksnap_brain_mr/MRIcrop-seg.label"


@pytest.fixture(scope="module")
def win(module_app_window):
    return module_app_window(show=True, install_panels=False, size=(1200, 800))


@pytest.fixture
def c(win, data_dir, monkeypatch):
    """Controller with the ITK-SNAP brain MR and its segmentation open (fresh for every test)."""
    from medsam_gui.gui import dialogs

    monkeypatch.setattr(dialogs, "ask_unsaved", lambda parent, what: "discard")
    ctrl = win.controller
    ctrl.open_scan(data_dir / BRAIN, labels=data_dir / BRAIN_SEG)
    ctrl.wait_idle(60)
    yield ctrl
    for box in list(ctrl.error_boxes):
        box.close()
    ctrl.error_boxes.clear()


def _rows(panel):
    t = panel.table
    return [(int(t.item(r, 0).text()), t.item(r, 2).text()) for r in range(t.rowCount())]


def test_label_names_load_from_description_beside_labels(win, c):
    rows = _rows(win.labels_panel)
    assert len(rows) == 11
    assert rows[0] == (1, "vent-lat") and (4, "hippo-R") in rows and rows[-1] == (11, "arteries")
    # colours follow the file: label 4 is (255, 255, 0)
    assert np.allclose(c.labels_layer.colormap.map(4)[:3], (1.0, 1.0, 0.0), atol=1e-3)
    swatch = win.labels_panel.table.item(3, 1).background().color()
    assert (swatch.red(), swatch.green(), swatch.blue()) == (255, 255, 0)


def test_add_rename_recolour_and_active_label(win, c, monkeypatch):
    from medsam_gui.gui import dialogs

    panel = win.labels_panel
    panel.add_button.click()
    assert _rows(panel)[-1] == (12, "label 12")
    assert c.active_label == 12 and c.labels_layer.selected_label == 12
    # rename by editing the name cell
    row = panel.row_of(12)
    panel.table.item(row, 2).setText("  lesion  ")
    assert c.label_table[12].name == "lesion"
    assert _rows(panel)[-1] == (12, "lesion")
    # recolour through the Colour… button (QColorDialog replaced)
    monkeypatch.setattr(dialogs, "ask_color", lambda parent, rgba, title="": (0.0, 0.5, 1.0, 1.0))
    panel.color_button.click()
    assert c.label_table[12].color == (0.0, 0.5, 1.0, 1.0)
    assert np.allclose(c.labels_layer.colormap.map(12), (0.0, 0.5, 1.0, 1.0))
    # choose the active label by selecting its row
    panel.table.selectRow(panel.row_of(5))
    assert c.active_label == 5 and c.labels_layer.selected_label == 5
    assert "hippo-L" in panel.active_label.text()
    # napari's own label spin box moves the panel selection too
    c.labels_layer.selected_label = 7
    assert c.active_label == 7 and panel.selected_value() == 7


def test_delete_label_erases_voxels_as_one_undo_step(win, c, data_dir, monkeypatch):
    from medsam_gui.gui import dialogs

    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / BRAIN_SEG)))
    n4 = int((seg == 4).sum())
    assert n4 > 0
    panel = win.labels_panel
    c.rename_label(4, "lesion 4")
    deleted_info = c.label_table[4]
    panel.table.selectRow(panel.row_of(4))
    monkeypatch.setattr(dialogs, "ask_yes_no", lambda *a, **k: False)
    panel.delete_button.click()
    assert 4 in c.label_table and int((c.labels_layer.data == 4).sum()) == n4
    asked = []
    monkeypatch.setattr(dialogs, "ask_yes_no", lambda parent, title, text, **k: asked.append(text) or True)
    panel.delete_button.click()
    assert f"{n4:,} voxels" in asked[0]
    assert 4 not in c.label_table and panel.row_of(4) is None
    assert int((c.labels_layer.data == 4).sum()) == 0
    assert int((c.source_labels() == 5).sum()) == int((seg == 5).sum())  # others untouched
    c.undo()  # Edit > Undo / Ctrl+Z
    assert int((c.labels_layer.data == 4).sum()) == n4
    assert np.array_equal(c.source_labels(), seg)
    # the table entry comes back with the voxels, under its old name and colour
    assert 4 in c.label_table and panel.row_of(4) is not None
    assert c.label_table[4] == deleted_info
    c.redo()  # deleting again removes the entry again
    assert int((c.labels_layer.data == 4).sum()) == 0
    assert 4 not in c.label_table and panel.row_of(4) is None
    c.undo()
    assert 4 in c.label_table and int((c.labels_layer.data == 4).sum()) == n4


def test_import_and_export_itksnap_descriptions(win, c, data_dir, tmp_path, monkeypatch):
    from medsam_gui.gui import dialogs
    from medsam_gui.io import read_label_description

    c.rename_label(1, "renamed")
    c.recolor_label(2, (0.2, 0.2, 0.2))
    monkeypatch.setattr(dialogs, "ask_open_file", lambda *a, **k: str(data_dir / BRAIN_DESC))
    win.labels_panel.import_button.click()
    assert c.label_table[1].name == "vent-lat"
    assert c.label_table[2].color_255 == (0, 175, 255)
    out = tmp_path / "names.label"
    monkeypatch.setattr(dialogs, "ask_save_file", lambda *a, **k: str(out))
    c.rename_label(3, "fourth ventricle")
    win.labels_panel.export_button.click()
    back = read_label_description(out)
    assert [i.name for i in back][:3] == ["vent-lat", "vent-3rd", "fourth ventricle"]
    assert back == c.label_table


def test_write_slice_mask_is_one_undo_step_and_respects_other_labels(c):
    layer = c.labels_layer
    before = layer.data.copy()
    axis, index = 0, 30
    sl = np.take(before, index, axis=axis)
    other = sl != 0
    assert other.any()
    mask = np.zeros(sl.shape, bool)
    mask[20:90, 10:60] = True
    n = c.write_slice_mask(axis, index, mask, 12)
    after = np.take(layer.data, index, axis=axis)
    assert n == int((mask & ~other).sum())
    assert np.array_equal(after[mask & other], sl[mask & other])  # other labels kept
    assert (after[mask & ~other] == 12).all()
    # the rest of the volume is unchanged
    rest = np.ones(before.shape, bool)
    rest[index] = False
    assert np.array_equal(layer.data[rest], before[rest])
    # a re-segmentation replaces the previous result on that slice
    small = np.zeros(sl.shape, bool)
    ys, xs = np.nonzero(other)
    cy, cx = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    small[cy - 6:cy + 6, cx - 6:cx + 6] = True
    assert (small & other).any() and (small & ~other).any()
    c.write_slice_mask(axis, index, small, 12)
    after2 = np.take(layer.data, index, axis=axis)
    assert set(np.nonzero((after2 == 12).ravel())[0]) == set(np.nonzero((small & ~other).ravel())[0])
    # overwrite_other paints over other labels
    assert c.write_slice_mask(axis, index, small, 12, overwrite_other=True) == int((small & other).sum())
    assert (np.take(layer.data, index, axis=axis)[small] == 12).all()
    # each write was one undo step
    layer.undo()
    assert np.array_equal(np.take(layer.data, index, axis=axis), after2)
    layer.undo()
    assert np.array_equal(np.take(layer.data, index, axis=axis), after)
    layer.undo()
    assert np.array_equal(layer.data, before)


def test_edit_group_is_one_undo_step(c):
    layer = c.labels_layer
    before = layer.data.copy()
    changes = []
    c.labels_changed.connect(lambda: changes.append(1))
    mask = np.zeros(before.shape[1:], bool)
    mask[5:15, 5:15] = True
    with c.edit_group():
        for z in range(10, 20):
            c.write_slice_mask(0, z, mask, 9, overwrite_other=True)
        # a coronal write inside the same group
        cm = np.zeros((before.shape[0], before.shape[2]), bool)
        cm[0:4, 0:4] = True
        c.write_slice_mask(1, 3, cm, 9, overwrite_other=True)
        assert changes == []  # one notification, at the end of the group
    assert changes == [1]
    assert int((layer.data[10:20, 5:15, 5:15] == 9).sum()) == 10 * 100
    assert c.has_unsaved_labels()
    layer.undo()
    assert np.array_equal(layer.data, before)
    layer.redo()
    assert int((layer.data[10:20, 5:15, 5:15] == 9).sum()) == 1000


def test_napari_keyboard_undo_goes_through_controller(c):
    """Ctrl+Z / Ctrl+Shift+Z bound on the labels layer undo/redo and announce labels_changed."""
    layer = c.labels_layer
    n = c.display_volume().shape[0]
    mask = np.zeros(c.display_volume().shape[1:], bool)
    mask[5:9, 6:12] = True
    before = np.asarray(layer.data[n // 2]).copy()
    c.write_slice_mask(0, n // 2, mask, 1)
    seen = []
    c.labels_changed.connect(lambda: seen.append(1))
    try:
        bindings = {str(k): f for k, f in layer.keymap.items()}
        bindings["Ctrl+Z"](layer)
        assert np.array_equal(np.asarray(layer.data[n // 2]), before) and len(seen) == 1
        bindings["Ctrl+Shift+Z"](layer)
        assert np.asarray(layer.data[n // 2])[mask].tolist() == [1] * int(mask.sum()) and len(seen) == 2
    finally:
        c.labels_changed.disconnect()
        c.undo()
