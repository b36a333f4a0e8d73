"""Window presets follow the modality: CT presets (HU) on a CT, percentile presets on an MR."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from qtpy.QtCore import Qt

from medsam_gui import config
from medsam_gui.core import intensity

pytestmark = pytest.mark.gui

HIPPO = "msd_hippocampus/hippocampus_003_image.nii.gz"


def _positive_percentiles(array: np.ndarray, low: float, high: float) -> tuple[float, float]:
    values = np.sort(array[array > 0].astype(np.float64))
    lo, hi = np.quantile(values, [low / 100.0, high / 100.0])  # the same linear interpolation
    return float(lo), float(hi)


def test_mr_preset_bounds_are_percentiles_of_the_voxels_above_zero(data_dir):
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / HIPPO)))
    bounds = intensity.mr_preset_bounds(mr)
    assert list(bounds) == list(intensity.MR_PRESETS)
    for name, (low, high) in intensity.MR_PRESETS.items():
        assert bounds[name] == pytest.approx(_positive_percentiles(mr, low, high), rel=1e-6)
    assert bounds["auto"] == intensity.mr_auto_bounds(mr)
    assert bounds["full range"] == pytest.approx((float(mr[mr > 0].min()), float(mr.max())))
    # a scan with no voxel above 0 uses all voxels; a constant one still gets a usable window
    assert intensity.mr_preset_bounds(-np.arange(10.0))["full range"] == (-9.0, 0.0)
    assert intensity.mr_preset_bounds(np.full((2, 3), 7.0))["contrast"] == (7.0, 8.0)


@pytest.fixture(scope="module")
def win(module_app_window):
    return module_app_window(demo=True, show=True, install_panels=False)


def _shown(panel, group: str) -> bool:
    box = getattr(panel, group)
    return box.isVisible() and box.isEnabled()


def test_presets_follow_the_modality_of_the_scan_opened(win, qtbot, data_dir):
    c, panel = win.controller, win.window_panel
    assert c.volume.modality == "CT"
    assert _shown(panel, "ct_presets") and not _shown(panel, "mr_presets")

    c.open_scan(data_dir / HIPPO, confirm=False)
    c.wait_idle(60)
    assert c.volume.modality == "MR"
    assert not _shown(panel, "ct_presets") and _shown(panel, "mr_presets")
    assert all(not b.isEnabled() for b in panel.preset_buttons.values())
    shown = c.window_bounds
    qtbot.mouseClick(panel.preset_buttons["lung"], Qt.MouseButton.LeftButton)  # hidden and disabled
    assert c.window_bounds == shown
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / HIPPO)))
    for name in ("contrast", "bright detail", "full range", "auto"):
        qtbot.mouseClick(panel.mr_preset_buttons[name], Qt.MouseButton.LeftButton)
        expected = _positive_percentiles(mr, *intensity.MR_PRESETS[name])
        assert c.window_bounds == pytest.approx(expected, rel=1e-5)
        assert panel.level_spin.value() == pytest.approx((expected[0] + expected[1]) / 2, abs=0.06)
    assert np.array_equal(c.orientation.from_display(c.image_layer.data), mr)  # display only

    c.open_scan(config.demo_scan_path(), confirm=False)
    c.wait_idle(60)
    assert _shown(panel, "ct_presets") and not _shown(panel, "mr_presets")
    qtbot.mouseClick(panel.preset_buttons["lung"], Qt.MouseButton.LeftButton)
    assert c.window_bounds == pytest.approx(intensity.window_bounds(*intensity.WINDOW_PRESETS["lung"]))
