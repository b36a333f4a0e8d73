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


def test_windows_are_closed_and_home_restored(qapp, tmp_path, _isolated_home):
    windows = AppWindows(home=tmp_path)
    first, second = windows(show=True, install_panels=False), windows(show=True, install_panels=False)
    assert first.qt_window.isVisible() and second.qt_window.isVisible()
    assert os.environ["MEDSAM_GUI_HOME"] == str(_isolated_home)  # the window's home only while building
    windows.close_all()
    assert sip.isdeleted(first.qt_window) and sip.isdeleted(second.qt_window)
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
