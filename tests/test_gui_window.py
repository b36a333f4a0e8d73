"""Window/level panel: presets, MR auto and manual level/width change only the display."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medsam_gui import config
from medsam_gui.core import intensity

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def win(module_app_window):
    return module_app_window(demo=True, show=True, install_panels=False)


def test_ct_presets_change_contrast_limits_not_data(win):
    c = win.controller
    panel = win.window_panel
    c.open_scan(config.demo_scan_path(), confirm=False)
    c.wait_idle(60)
    data = c.image_layer.data
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(config.demo_scan_path())))
    seen = []
    c.window_changed.connect(lambda lo, hi: seen.append((lo, hi)))
    for name, (level, width) in intensity.WINDOW_PRESETS.items():
        panel.preset_buttons[name].click()
        lo, hi = level - width / 2, level + width / 2
        assert tuple(c.image_layer.contrast_limits) == pytest.approx((lo, hi))
        assert c.window_bounds == pytest.approx((lo, hi))
        assert panel.level_spin.value() == pytest.approx(level)
        assert panel.width_spin.value() == pytest.approx(width)
    assert seen[-1] == pytest.approx((60 - 80, 60 + 80))
    assert seen[0] == pytest.approx((-160.0, 240.0)) and seen[1] == pytest.approx((-600 - 750, -600 + 750))
    # the data never change: same array object, same voxels
    assert c.image_layer.data is data
    assert np.shares_memory(data, c.volume.array)
    assert np.array_equal(c.orientation.from_display(c.image_layer.data), reference)


def test_manual_level_width_and_napari_slider_sync(win):
    c = win.controller
    panel = win.window_panel
    panel.width_spin.setValue(300.0)
    panel.level_spin.setValue(-50.0)
    assert c.window_bounds == pytest.approx((-200.0, 100.0))
    # napari's own contrast slider: the panel follows the window as displayed
    c.image_layer.contrast_limits = (-500.0, 1500.0)
    assert panel.level_spin.value() == pytest.approx(500.0)
    assert panel.width_spin.value() == pytest.approx(2000.0)
    assert c.window_bounds == (-500.0, 1500.0)


def test_mr_auto_window(win, data_dir):
    c = win.controller
    path = data_dir / "msd_hippocampus/hippocampus_003_image.nii.gz"
    c.open_scan(path, confirm=False)
    c.wait_idle(60)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    expected = intensity.mr_auto_bounds(arr)
    assert c.volume.modality == "MR"
    assert c.window_bounds == pytest.approx(expected, rel=1e-5)  # MR default = auto window
    c.apply_preset("bone")  # the CT preset buttons are hidden on an MR (tests/test_mr_presets.py)
    assert c.window_bounds == pytest.approx((-500.0, 1300.0))
    win.window_panel.auto_button.click()
    assert c.window_bounds == pytest.approx(expected, rel=1e-5)
    assert np.array_equal(c.orientation.from_display(c.image_layer.data), arr)
