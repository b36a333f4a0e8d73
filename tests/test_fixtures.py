"""The shared fixtures of tests/gui_fixtures.py hand out what they promise."""

from __future__ import annotations

import os
import weakref

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from gui_fixtures import AppWindows
from PyQt6 import sip


def test_medsam_checkpoint_is_a_plain_state_dict_the_loader_accepts(medsam_checkpoint, medsam_state_dict):
    from medsam_gui.models.medsam import load_medsam_state_dict

    assert medsam_checkpoint.name == "medsam_vit_b.pth"
    raw = torch.load(medsam_checkpoint, map_location="cpu", weights_only=True)
    assert set(raw) == set(medsam_state_dict) and len(raw) > 200
    loaded = load_medsam_state_dict(medsam_checkpoint)
    assert set(loaded) == set(medsam_state_dict)
    key = "image_encoder.patch_embed.proj.weight"
    assert tuple(loaded[key].shape) == (768, 3, 16, 16) and torch.equal(loaded[key], medsam_state_dict[key])


def test_universeg_checkpoint_is_a_plain_state_dict_that_loads(universeg_checkpoint, universeg_state_dict):
    from medsam_gui.models.universeg import universeg_v1

    assert universeg_checkpoint.name == "universeg_v1_nf64_ss64_STA.pt"
    raw = torch.load(universeg_checkpoint, map_location="cpu", weights_only=True)
    assert set(raw) == set(universeg_state_dict) and len(raw) == 44
    model = universeg_v1(weights=universeg_checkpoint)
    assert sum(p.numel() for p in model.parameters()) == 1_182_785
    assert torch.equal(model.state_dict()["out_conv.conv.weight"], universeg_state_dict["out_conv.conv.weight"])


def test_scan_paths(demo_scan, demo_labels, lung_scan, lung_labels):
    for scan, labels, size_xyz in ((demo_scan, demo_labels, (122, 101, 30)), (lung_scan, lung_labels, (512, 512, 48))):
        assert sitk.ReadImage(str(scan)).GetSize() == size_xyz
        lab = sitk.ReadImage(str(labels))
        assert lab.GetSize() == size_xyz and sitk.GetArrayViewFromImage(lab).any()


def test_app_window_builds_the_real_window_with_its_panels_and_scan(app_window, demo_scan):
    from medsam_gui.gui.main_window import MainWindow

    w = app_window(demo=True, show=False)
    assert isinstance(w, MainWindow)
    c = w.controller
    assert c.volume is not None and c.volume.shape == (30, 101, 122) and not c.busy  # loaded: waited
    assert c.volume.path == str(demo_scan)
    assert np.shares_memory(c.image_layer.data, c.volume.array)
    assert "load_medsam_weights" in w.actions  # the MedSAM panel is installed


def test_a_shown_full_window_is_deleted(qapp):
    windows = AppWindows()
    qt_window = windows(show=True).qt_window
    windows.close_all()
    assert sip.isdeleted(qt_window)


def test_a_hidden_full_window_is_freed_cleanly(qapp):
    """Nothing of a never-shown window (napari does not delete its Qt window) raises when it is
    collected (pytest-qt fails the test on an exception inside a Qt callback, such as an event
    filter whose Python side is already gone), and the window is freed."""
    windows = AppWindows()
    window = weakref.ref(windows(show=False))
    windows.close_all()
    assert window() is None


def test_closed_hidden_window_then_gc_and_events_raise_nothing(qapp, qtbot):
    """MainWindow.close() takes its event filters off the Qt widgets: after close, gc.collect()
    and events sent to the (possibly still alive) Qt window, nothing raises inside a Qt callback
    (pytest-qt fails the test on one) and the controller shut down once; and a filter whose
    Python side was cleared by the garbage collector lets events through."""
    import gc

    from qtpy.QtCore import QEvent
    from qtpy.QtGui import QCloseEvent
    from qtpy.QtWidgets import QApplication

    from medsam_gui.gui.main_window import _CloseFilter

    windows = AppWindows()
    window = windows(show=False, install_panels=False)
    qt_window = window.qt_window
    shutdowns = []
    window.controller.add_shutdown_hook(lambda: shutdowns.append(1))
    close_filter = window._close_filter
    window.close(force=True)
    assert shutdowns == [1] and close_filter.window() is None  # detached
    ref = weakref.ref(window)
    windows._windows.clear()  # closed by hand above
    del window, close_filter
    QApplication.processEvents()  # Qt's deferred deletes, then the Python cycles
    gc.collect()
    QApplication.processEvents()
    if not sip.isdeleted(qt_window):  # napari does not delete a never-shown Qt window
        for event in (QCloseEvent(), QEvent(QEvent.Type.Hide), QEvent(QEvent.Type.Show)):
            QApplication.sendEvent(qt_window, event)
        QApplication.processEvents()
        qt_window.hide()
        qt_window.deleteLater()
    del qt_window
    QApplication.processEvents()
    gc.collect()
    QApplication.processEvents()
    assert ref() is None and shutdowns == [1]  # freed; the controller shut down once

    # an installed filter whose attributes the garbage collector cleared mid-cycle
    windows = AppWindows()
    window = windows(show=False, install_panels=False)
    try:
        stray = _CloseFilter(window)
        window.qt_window.installEventFilter(stray)
        stray.__dict__.clear()
        assert stray.window() is None
        assert stray.eventFilter(window.qt_window, QCloseEvent()) is False
        QApplication.sendEvent(window.qt_window, QEvent(QEvent.Type.Hide))
        stray._after_close()
        QApplication.processEvents()
        window.qt_window.removeEventFilter(stray)
    finally:
        windows.close_all()


def test_windows_are_closed_and_home_restored(qapp, tmp_path, _isolated_home):
    windows = AppWindows(home=tmp_path)
    first, second = windows(show=True, install_panels=False), windows(show=True, install_panels=False)
    assert first.qt_window.isVisible() and second.qt_window.isVisible()
    assert os.environ["MEDSAM_GUI_HOME"] == str(_isolated_home)  # the window's home only while building
    qt_windows = (first.qt_window, second.qt_window)
    windows.close_all()
    assert all(sip.isdeleted(w) for w in qt_windows)
    assert first.qt_window is None and second.qt_window is None  # a closed window frees its wrappers
    windows.close_all()  # nothing left to close


@pytest.fixture(scope="module")
def shared_window(module_app_window):
    return module_app_window(show=False, install_panels=False)


def test_module_window_is_shared_1(shared_window, _isolated_home):
    assert not sip.isdeleted(shared_window.qt_window) and shared_window.controller.volume is None
    assert os.environ["MEDSAM_GUI_HOME"] == str(_isolated_home)


def test_module_window_is_shared_2(shared_window, module_app_window):
    assert not sip.isdeleted(shared_window.qt_window)
    assert module_app_window(show=False, install_panels=False) is not shared_window


def test_panels_installed_in_the_module_home(module_app_window, _isolated_home):
    """``panels=`` installs panels the test's way, in the window's home, into window.panels."""
    from medsam_gui.gui import session as gs

    seen = {}

    def install_session(controller):
        seen["home"] = os.environ["MEDSAM_GUI_HOME"]
        return gs.install(controller, offer=False)

    w = module_app_window(show=False, install_panels=False, panels={"session": install_session})
    assert seen["home"] == str(module_app_window.home) != str(_isolated_home)
    assert w.panels.session is not None and w.panels.medsam is None
    with module_app_window.home_env() as home:
        assert os.environ["MEDSAM_GUI_HOME"] == str(home)
    assert os.environ["MEDSAM_GUI_HOME"] == str(_isolated_home)
    with pytest.raises(ValueError, match="unknown panels"):
        module_app_window(show=False, install_panels=False, panels={"nope": lambda c: None})


def test_hippo_arrays_are_shared_read_only(hippo):
    img, lab = hippo
    assert img.shape == lab.shape == (35, 52, 34) and lab.dtype == np.int16
    assert set(np.unique(lab)) == {0, 1, 2}
    with pytest.raises(ValueError):
        lab[0, 0, 0] = 1
