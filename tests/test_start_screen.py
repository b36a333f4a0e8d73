"""The start screen of the real window: shown while no scan is open, its buttons are the File
actions, "Open the demo" opens the demo and hides it, and the scan joins the recent scans."""

from __future__ import annotations

from pathlib import Path

import pytest
from qtpy.QtCore import Qt

from medsam_gui.gui.scan_files import recent_scans

pytestmark = pytest.mark.gui


def test_open_the_demo_from_the_start_screen(app_window, qtbot, demo_scan):
    window = app_window(install_panels=False)
    start = window.start_screen
    window.show()
    qtbot.waitExposed(window.qt_window)
    assert start.isVisible()
    assert not window.qt_viewer._welcome_widget.isVisible()  # napari's welcome page stays hidden
    canvas = window.qt_viewer.canvas.native
    assert start.geometry() == canvas.rect()
    assert [b.text() for b in start.buttons.values()] == ["Open scan…", "Open DICOM folder…", "Open the demo"]
    assert not start.recent_list.isVisible()  # a fresh home has no recent scans
    window.recent_menu.aboutToShow.emit()
    assert [a.isEnabled() for a in window.recent_menu.actions()] == [False]  # "No recent scans"

    qtbot.mouseClick(start.buttons["open_demo"], Qt.MouseButton.LeftButton)
    window.controller.wait_idle(60)
    assert window.controller.volume is not None
    assert Path(window.controller.volume.path).resolve() == demo_scan.resolve()
    assert window.controller.volume.array.shape == (30, 101, 122)
    assert not start.isVisible()
    assert recent_scans() == [demo_scan.resolve()]
    item = start.recent_list.item(0)
    assert Path(item.data(Qt.ItemDataRole.UserRole)) == demo_scan.resolve()
    assert demo_scan.name in item.text()
    window.recent_menu.aboutToShow.emit()  # File > Open recent lists it too
    assert [a.toolTip() for a in window.recent_menu.actions()] == [str(demo_scan.resolve())]
