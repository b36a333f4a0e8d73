"""The application shell: opening scans faithfully, errors, saving, drops, workers, hooks.

One window (the demo scan, tests/gui_fixtures.py's module_app_window) is shared by the tests
of this module; each test opens what it needs through the real controller / menu actions and
waits for the background loader, so any order of the tests passes. The fresh window's own
state is checked on a window of its own.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from medsam_gui import config
from medsam_gui.errors import MedsamGuiError, ScanReadError

pytestmark = pytest.mark.gui

LUNG_IMAGE = "lung_ct/lung1_image.nrrd"
LUNG_LABEL = "lung_ct/lung1_label.nrrd"


@pytest.fixture(scope="module")
def win(module_app_window):
    return module_app_window(demo=True, show=True, install_panels=False)


@pytest.fixture
def c(win, monkeypatch):
    """The controller, with the 'unsaved labels?' question answered "discard" and error boxes closed after."""
    from medsam_gui.gui import dialogs

    monkeypatch.setattr(dialogs, "ask_unsaved", lambda parent, what: "discard")
    ctrl = win.controller
    ctrl.last_error = None
    yield ctrl
    ctrl.wait_idle(60)
    for box in list(ctrl.error_boxes):
        try:
            box.close()
        except RuntimeError:
            pass
    ctrl.error_boxes.clear()


def _sitk(path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def test_demo_scan_opens_with_display_geometry(app_window):
    win = app_window(demo=True, show=True, install_panels=False)  # a fresh window: what the user sees first
    c = win.controller
    img, arr = _sitk(config.demo_scan_path())
    assert c.volume is not None and c.volume.path.endswith("example_ct_sm.nii.gz")
    assert [layer.name for layer in win.viewer.layers] == ["scan", "labels"]
    assert c.image_layer is win.viewer.layers["scan"] and c.labels_layer is win.viewer.layers["labels"]
    # demo is stored RAS (direction diag(-1,-1,1)): display flips rows and columns, no copy
    assert c.image_layer.data.shape == (30, 101, 122)
    assert tuple(c.image_layer.scale) == (3.0, 3.0, 3.0)
    assert np.shares_memory(c.image_layer.data, c.volume.array)
    assert np.array_equal(c.image_layer.data, arr[:, ::-1, ::-1])
    assert c.labels_layer.data.shape == c.image_layer.data.shape
    assert c.window_bounds == (-160.0, 240.0)  # CT default: soft tissue 40/400
    assert c.view == "axial" and c.current_slice(0) == 15
    assert "example_ct_sm" in win.qt_window.windowTitle()
    # napari's own menus (its readers ignore the scan geometry) are gone; ours are there
    menus = [a.text().replace("&", "") for a in win.qt_window.menuBar().actions()]
    assert menus == ["File", "Edit", "View", "Models", "Help"]  # Models filled by the model panels
    for name in ("open_scan", "open_dicom", "open_labels", "save_labels", "save_labels_as",
                 "import_descriptions", "export_descriptions", "quit"):
        assert name in win.actions
    assert win.actions["save_labels"].shortcut().toString() == "Ctrl+S"


def test_slice_slider_shows_the_whole_view_name(win, c, qtbot):
    c.open_scan(config.demo_scan_path())
    c.wait_idle(60)
    for view in ("sagittal", "axial"):
        win.controller.set_view(view)
        qtbot.wait(50)
        sliders = [w for w in win.qt_viewer.dims.slider_widgets if w.isVisible()]
        assert len(sliders) == 1
        lab = sliders[0].axis_label
        assert lab.text() == view
        # napari gave these fields 36 px: "axial" (28 px of text) showed as "axi" after the field's
        # frame and padding; the field must hold the longest name with 12 px to spare
        assert lab.width() >= lab.fontMetrics().horizontalAdvance("sagittal") + 12, (view, lab.width())


def test_open_lung_with_labels(c, data_dir):
    handle = c.open_scan(data_dir / LUNG_IMAGE, labels=data_dir / LUNG_LABEL)
    assert handle is not None
    c.wait_idle(60)
    img, arr = _sitk(data_dir / LUNG_IMAGE)
    _, lab = _sitk(data_dir / LUNG_LABEL)
    assert c.volume.shape == arr.shape == (48, 512, 512)
    # anisotropic voxels keep their proportions: scale = display spacing (z, y, x mm)
    assert tuple(c.image_layer.scale) == (5.0, 0.5703125, 0.5703125)
    assert np.array_equal(c.source_labels(), lab)
    assert int((c.labels_layer.data == 1).sum()) == int((lab == 1).sum()) > 0
    assert 1 in c.label_table
    assert not c.has_unsaved_labels()
    assert c.labels_path is not None and c.labels_path.name == "lung1_label.nrrd"


def test_off_grid_labels_show_message_and_keep_labels(c, data_dir):
    c.open_scan(data_dir / LUNG_IMAGE, labels=data_dir / LUNG_LABEL)
    c.wait_idle(60)
    before = c.labels_layer.data.copy()
    volume = c.volume
    c.open_labels(data_dir / "brain_mr/brain1_label.nrrd")
    c.wait_idle(60)
    assert c.last_error is not None and "not on the scan's grid" in c.last_error
    assert c.error_boxes and c.error_boxes[-1].isVisible()
    assert c.volume is volume
    assert np.array_equal(c.labels_layer.data, before)


def test_bad_scan_shows_error_and_keeps_current(c, data_dir, tmp_path):
    c.open_scan(data_dir / "msd_hippocampus/hippocampus_003_image.nii.gz")
    c.wait_idle(60)
    volume, layer_data = c.volume, c.image_layer.data
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file at all" * 10)
    c.open_scan(bad)
    c.wait_idle(60)
    assert c.last_error and "broken.nii.gz" in c.last_error
    assert c.volume is volume and c.image_layer.data is layer_data
    # a missing file too
    c.last_error = None
    c.open_scan(tmp_path / "missing.nii.gz")
    c.wait_idle(60)
    assert c.last_error and "does not exist" in c.last_error
    assert c.volume is volume


def test_unsaved_labels_ask_before_opening(c, data_dir, monkeypatch):
    from medsam_gui.gui import dialogs

    c.open_scan(data_dir / "msd_hippocampus/hippocampus_003_image.nii.gz")
    c.wait_idle(60)
    volume = c.volume
    mask = np.zeros(c.labels_layer.data.shape[1:], bool)
    mask[10:20, 10:20] = True
    c.write_slice_mask(0, 5, mask, 1)
    assert c.has_unsaved_labels()
    asked = []
    monkeypatch.setattr(dialogs, "ask_unsaved", lambda parent, what: asked.append(what) or "cancel")
    assert c.open_scan(data_dir / LUNG_IMAGE) is None
    assert asked and c.volume is volume and c.has_unsaved_labels()
    monkeypatch.setattr(dialogs, "ask_unsaved", lambda parent, what: asked.append(what) or "discard")
    assert c.open_scan(data_dir / LUNG_IMAGE) is not None
    c.wait_idle(60)
    assert len(asked) == 2 and c.volume is not volume and not c.has_unsaved_labels()


def test_save_labels_round_trip_on_source_grid(win, c, tmp_path, monkeypatch):
    """Ctrl+S asks for a path the first time; the file lies on the scan's own grid (RAS demo)."""
    from medsam_gui.gui import dialogs

    c.open_scan(config.demo_scan_path())
    c.wait_idle(60)
    disp = c.labels_layer.data
    # draw through the GUI path: a display-space mask on an axial slice and a coronal slice
    m = np.zeros(disp.shape[1:], bool)
    m[20:40, 5:30] = True  # anterior rows, patient-right columns
    c.write_slice_mask(0, 20, m, 1)
    info = c.add_label("tumour")
    mc = np.zeros((disp.shape[0], disp.shape[2]), bool)
    mc[3:9, 60:70] = True
    c.write_slice_mask(1, 50, mc, info.value)
    expected_display = disp.copy()
    target = tmp_path / "out" / "seg.nii.gz"
    target.parent.mkdir()
    asked = []
    monkeypatch.setattr(dialogs, "ask_save_file", lambda *a, **k: asked.append(a) or str(target))
    win.actions["save_labels"].trigger()
    assert len(asked) == 1 and target.is_file()
    img, arr = _sitk(config.demo_scan_path())
    out, out_arr = _sitk(target)
    assert out.GetSize() == img.GetSize()
    assert np.allclose(out.GetSpacing(), img.GetSpacing())
    assert np.allclose(out.GetOrigin(), img.GetOrigin(), atol=1e-4)
    assert np.allclose(out.GetDirection(), img.GetDirection())
    # the saved array, shown through the display transform, is what was drawn
    assert np.array_equal(c.orientation.to_display(out_arr), expected_display)
    # and it is the source-grid labels: display row r / column q are source y = 100 - r, x = 121 - q
    assert out_arr[20, 100 - 25, 121 - 10] == 1
    assert int((out_arr == info.value).sum()) == 6 * 10
    assert (target.parent / "seg.label").is_file()
    assert not c.has_unsaved_labels()
    # a second save goes to the same file without asking
    c.write_slice_mask(0, 21, m, 1)
    win.actions["save_labels"].trigger()
    assert len(asked) == 1
    assert int((_sitk(target)[1] == 1).sum()) == 2 * int(m.sum())


def test_save_refuses_source_scan(c, data_dir, tmp_path):
    src = tmp_path / "scan.nii.gz"
    shutil.copy(config.demo_scan_path(), src)
    c.open_scan(src)
    c.wait_idle(60)
    before = src.read_bytes()
    assert c.save_labels(src) is None
    assert c.last_error and "source scan" in c.last_error
    assert src.read_bytes() == before


def _two_series_folder(data_dir, folder):
    src = sorted(glob.glob(str(data_dir / "dcmqi_ct3slice_liver/dicom/*.dcm")))
    for f in src:
        shutil.copy(f, folder)
    for i, f in enumerate(src):
        reader = sitk.ImageFileReader()
        reader.SetFileName(f)
        reader.ReadImageInformation()
        img = reader.Execute()[::4, ::4]
        for key in reader.GetMetaDataKeys():
            img.SetMetaData(key, reader.GetMetaData(key))
        img.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.99.1")
        img.SetMetaData("0008|103e", "quarter resolution")
        img.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.99.1.{i + 1}")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"q{i}.dcm"))
        writer.Execute(img)


def test_dicom_folder_with_two_series_asks_which(c, data_dir, tmp_path, monkeypatch):
    from medsam_gui.gui import dialogs

    _two_series_folder(data_dir, tmp_path)
    seen = {}

    def choose(parent, folder, series):
        seen["series"] = series
        dlg = dialogs.SeriesDialog(parent, folder, series)  # the real dialog lists them
        seen["rows"] = [[dlg.table.item(r, col).text() for col in range(4)] for r in range(dlg.table.rowCount())]
        dlg.table.selectRow(1 if series[1].description == "quarter resolution" else 0)
        uid = dlg.selected_uid()
        dlg.deleteLater()
        return uid

    monkeypatch.setattr(dialogs, "choose_series", choose)
    win_action_open = c.window.actions["open_dicom"]
    monkeypatch.setattr(dialogs, "ask_open_folder", lambda parent, title: str(tmp_path))
    win_action_open.trigger()
    c.wait_idle(60)
    assert len(seen["series"]) == 2
    assert ["quarter resolution", "CT", "128 × 128 × 3", "3"] in seen["rows"]
    assert c.volume.meta["series_description"] == "quarter resolution"
    assert c.volume.shape == (3, 128, 128)


def test_four_d_scan_asks_for_component(c, tmp_path, monkeypatch):
    from medsam_gui.gui import dialogs

    frames = [sitk.GetImageFromArray((np.arange(4 * 5 * 6).reshape(4, 5, 6) * (k + 1)).astype(np.int16))
              for k in range(3)]
    path = tmp_path / "fourd.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    asked = []
    monkeypatch.setattr(dialogs, "choose_component", lambda parent, p, n, kind: asked.append(n) or 2)
    c.open_scan(path)
    c.wait_idle(60)
    assert asked == [3]
    assert c.volume.meta.get("component") == 2
    assert np.array_equal(c.volume.array, np.arange(120).reshape(4, 5, 6) * 3)


def test_reader_notices_are_shown(win, c, tmp_path):
    """A 2D image opens as one slice and the window says so; a clean scan shows no notice."""
    path = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(30 * 40, dtype=np.int16).reshape(30, 40)), str(path))
    c.open_scan(path)
    c.wait_idle(60)
    assert c.volume.shape == (1, 30, 40)
    assert win.oblique_notice.isVisibleTo(win.qt_window)
    assert "2D" in win.oblique_notice.text() or "2D" in win.oblique_notice.toolTip()
    c.open_scan(config.demo_scan_path())
    c.wait_idle(60)
    assert not win.oblique_notice.isVisibleTo(win.qt_window)


def test_drop_opens_with_our_loader(win, c, data_dir, monkeypatch):
    from qtpy.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
    from qtpy.QtGui import QDragEnterEvent, QDropEvent
    from qtpy.QtWidgets import QApplication

    from medsam_gui.gui import dialogs

    monkeypatch.setattr(dialogs, "ask_drop_action", lambda parent, path: "scan")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(data_dir / "itksnap_brain_mr/MRIcrop-orig.nii.gz"))])
    target = win.qt_viewer
    x, y = target.width() // 2, target.height() // 2
    enter = QDragEnterEvent(QPoint(x, y), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                            Qt.KeyboardModifier.NoModifier)
    assert QApplication.sendEvent(target, enter) and enter.isAccepted()
    drop = QDropEvent(QPointF(x, y), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                      Qt.KeyboardModifier.NoModifier)
    assert QApplication.sendEvent(target, drop)  # True: our filter took it from napari
    deadline = time.monotonic() + 5
    while not c.busy and time.monotonic() < deadline:
        QApplication.processEvents()
    c.wait_idle(60)
    assert c.volume.name == "MRIcrop-orig"
    assert [layer.name for layer in win.viewer.layers] == ["scan", "labels"]  # napari added nothing


def test_run_worker_off_gui_thread_with_progress_and_cancel(win, c):
    from qtpy.QtWidgets import QApplication

    seen = {}
    c.run_worker(lambda: threading.current_thread() is threading.main_thread(),
                 on_done=lambda r: seen.setdefault("on_main", r), description="thread check")
    c.wait_idle(10)
    assert seen["on_main"] is False

    gate = threading.Event()
    yielded = []

    def slow():
        for i in range(1000):
            gate.wait(0.01)
            yield i

    handle = c.run_worker(slow, on_yield=yielded.append, description="slow task")
    QApplication.processEvents()
    assert win.progress_bar.isVisibleTo(win.qt_window) and win.cancel_button.isVisibleTo(win.qt_window)
    deadline = time.monotonic() + 10
    while not yielded and time.monotonic() < deadline:
        QApplication.processEvents()
    win.cancel_button.click()
    assert handle.cancelled
    c.wait_idle(10)
    assert 0 < len(yielded) < 1000
    QApplication.processEvents()
    assert not win.progress_bar.isVisibleTo(win.qt_window)

    def boom():
        raise MedsamGuiError("the model file is damaged; download it again")

    c.run_worker(boom, description="failing")
    c.wait_idle(10)
    assert c.last_error == "the model file is damaged; download it again"


def test_runtime_error_in_generator_worker_is_reported_and_finishes(win, c):
    """torch raises RuntimeError; superqt would swallow it from a generator worker."""
    from qtpy.QtWidgets import QApplication

    errors, finished = [], []

    def gen():
        yield 1
        raise RuntimeError("CUDA out of memory (simulated)")

    handle = c.run_worker(gen, on_error=errors.append, description="failing generator")
    handle.add_done_callback(finished.append)
    c.wait_idle(10)
    QApplication.processEvents()
    assert handle.finished and finished == [handle]
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "out of memory" in str(errors[0])
    assert not win.progress_bar.isVisibleTo(win.qt_window)


def test_excepthook_shows_unexpected_errors(c):
    from medsam_gui.app import install_excepthook

    old = sys.excepthook
    try:
        install_excepthook(c)
        try:
            raise KeyError("surprise")
        except KeyError as exc:
            sys.excepthook(type(exc), exc, exc.__traceback__)
        assert c.last_error.startswith("Unexpected error: KeyError")
        assert c.error_boxes[-1].isVisible()
    finally:
        sys.excepthook = old


def test_add_dock_and_status_hooks(win, c):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication, QLabel

    label = QLabel("panel")
    dock = c.add_dock(label, "Test panel", area="right")
    QApplication.processEvents()
    assert win.qt_window.dockWidgetArea(dock) == Qt.DockWidgetArea.RightDockWidgetArea
    assert label.window() is win.qt_window and not dock.isHidden()
    with pytest.raises(ValueError):
        c.add_dock(QLabel("x"), "bad", area="middle")
    win.viewer.window.remove_dock_widget(dock)
    c.status("hello", 0)
    assert win.status_text() == "hello"


def test_cli_inputs_checked_before_window(tmp_path):
    from medsam_gui.app import run_app

    with pytest.raises(ScanReadError, match="does not exist"):
        run_app(scan=str(tmp_path / "nope.nii.gz"))
    with pytest.raises(MedsamGuiError, match="--labels needs a scan"):
        run_app(labels=str(tmp_path / "x.nii.gz"))
    assert os.environ.get("MEDSAM_GUI_HOME")


def test_menus_by_id_and_add_action(win):
    from qtpy.QtWidgets import QMenu

    assert all(isinstance(win.menu(m), QMenu) for m in ("file", "edit", "view", "models", "help"))
    with pytest.raises(KeyError):
        win.menu("tools")
    called = []
    act = win.add_action("file", "test_entry", "Test entry", lambda: called.append(1), shortcut="Ctrl+Alt+T",
                         tip="a test", after="open_labels", separator_before=True)
    try:
        entries = win.menu("file").actions()
        i = entries.index(win.actions["open_labels"])
        assert entries[i + 1].isSeparator() and entries[i + 2] is act and win.actions["test_entry"] is act
        assert act.shortcut().toString() == "Ctrl+Alt+T" and act.toolTip() == "a test (Ctrl+Alt+T)"
        act.trigger()
        assert called == [1]
        with pytest.raises(KeyError):  # "after" names an action of another menu
            win.add_action("file", "other", "Other", lambda: None, after="undo")
    finally:
        win.menu("file").removeAction(entries[i + 1])
        win.menu("file").removeAction(act)
        del win.actions["test_entry"]


def test_state_providers_and_shutdown_hooks(qapp):
    import threading

    from medsam_gui.gui.controller import Controller
    from medsam_gui.gui.shutdown import background_threads

    c = Controller(viewer=None)
    seen = []
    c.state_changed.connect(lambda: seen.append("changed"))
    c.register_state_provider("panel", lambda: {"a": 1}, seen.append)
    assert c.state_providers["panel"][0]() == {"a": 1}
    with pytest.raises(ValueError):
        c.register_state_provider("", dict, print)
    c.notify_state_changed()
    assert seen == ["changed"]

    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, args=(30,), name="medsam-test-worker", daemon=True)
    worker.start()
    assert worker in background_threads()
    c.add_shutdown_hook(lambda: seen.append("first added"))
    c.add_shutdown_hook(lambda: 1 / 0)  # a failing hook does not stop the others
    c.add_shutdown_hook(lambda: (seen.append("last added"), stop.set()))
    c.shutdown(timeout_s=5)
    c.shutdown()  # once only
    assert seen[1:] == ["last added", "first added"]
    assert not worker.is_alive() and worker not in background_threads()


def test_shutdown_waits_for_busy_threads_not_parked_ones(qapp):
    """A window closing joins the ``medsam-*`` threads still at work (they may be inside torch)
    but not those waiting for work in ``runtime.parked`` (such as another window's decoder)."""
    import threading
    import time

    from medsam_gui.gui.controller import Controller
    from medsam_gui.gui.shutdown import background_threads
    from medsam_gui.runtime import is_parked, parked

    go, busy_done = threading.Event(), threading.Event()

    def waiting():
        with parked():
            go.wait(30)

    def working():
        time.sleep(0.5)  # a pass finishing after its stop request
        busy_done.set()

    idle = threading.Thread(target=waiting, name="medsam-test-parked", daemon=True)
    busy = threading.Thread(target=working, name="medsam-test-busy", daemon=True)
    idle.start()
    busy.start()
    while not is_parked(idle):
        time.sleep(0.01)
    t0 = time.monotonic()
    Controller(viewer=None).shutdown(timeout_s=5)
    assert busy_done.is_set() and time.monotonic() - t0 < 2.0
    assert idle.is_alive() and idle in background_threads()
    go.set()
    idle.join(5)
    assert not idle.is_alive()
