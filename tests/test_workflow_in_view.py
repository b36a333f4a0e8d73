"""The workflow in view (issue 17): the real window at 1600×1000 with its default docks, on the
demo CT and its 41 labels.

- the window fills the screen the first time and comes back where it was closed;
- each dock's primary actions are in view without scrolling (the settings scroll, the run
  settings fold away);
- texts are whole: the UniverSeg introduction, the recovery dialog's headers, the weights
  dialog's wrong-checkpoint message (the model named, no key names, the download paragraph
  still readable) and its link colour (contrast >= 4.5 on the dialog's background);
- the Measurements table shows the RECIST diameters and the volume without scrolling;
- UniverSeg: accepted slices join the examples only with "Add accepted slices to the examples"
  ticked (the default), and the status bar says which happened.
"""

from __future__ import annotations

import time

import pytest
from qtpy.QtCore import QPoint, QRect, Qt
from qtpy.QtWidgets import QApplication

from medsam_gui import config

pytestmark = pytest.mark.gui

SIZE = (1600, 1000)


def _pump(seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def _fully_visible(widget, dock) -> bool:
    """``widget`` is shown whole inside ``dock`` (nothing scrolled away, clipped or covered)."""
    if not widget.isVisible() or widget.visibleRegion().boundingRect() != widget.rect():
        return False
    return dock.rect().contains(QRect(widget.mapTo(dock, QPoint(0, 0)), widget.size()))


@pytest.fixture(scope="module")
def win(module_app_window, demo_scan, demo_labels):
    """The whole app (default panels and docks) at 1600×1000 on the demo CT and its labels."""
    window = module_app_window(demo_scan, labels=demo_labels, size=SIZE)
    _pump(0.5)
    return window


def _raise(win, name: str) -> None:
    win.raise_dock(name)
    _pump(0.3)


# ---------------------------------------------------------------- item 1: window geometry
def test_first_open_fills_the_screen_then_the_last_geometry_comes_back(qapp):
    from medsam_gui.app import build_app

    window = build_app(show=True, install_panels=False)
    try:
        _pump(0.2)
        qt = window.qt_window
        assert qt.geometry() == qt.screen().availableGeometry()  # first open: fills the screen
        assert qt.isMaximized()
        qt.showNormal()
        avail = qt.screen().availableGeometry()
        h = qt.minimumHeight()  # somewhere else on the screen, smaller than it
        chosen = QRect(avail.left() + 20, avail.top() + min(10, avail.height() - h), qt.minimumWidth() + 90, h)
        qt.setGeometry(chosen)
        _pump(0.2)
        assert qt.geometry() == chosen and chosen.width() < avail.width()
    finally:
        window.close(force=True)
    window = build_app(show=True, install_panels=False)
    try:
        _pump(0.2)
        restored = window.qt_window.geometry()
        assert restored.size() == chosen.size() and restored.left() == chosen.left()
        # Qt may move a window down so that its title bar is on the screen (small test screen)
        assert 0 <= restored.top() - chosen.top() <= 40
        assert not window.qt_window.isMaximized()
    finally:
        window.close(force=True)


# ---------------------------------------------------------------- item 2: primary actions
def test_primary_actions_are_in_view_without_scrolling(win):
    medsam, universeg = win.panels.medsam, win.panels.universeg
    assert (win.qt_window.width(), win.qt_window.height()) == SIZE
    _raise(win, "MedSAM")
    dock = win.docks["MedSAM"]
    assert medsam.settings_scroll.verticalScrollBar().value() == 0
    for button in (medsam.box_button, medsam.recist_button, medsam.propagation_box.propagate_button,
                   medsam.propagation_box.cancel_button):
        assert _fully_visible(button, dock), button.text()
    # the settings scroll below the actions: they are taller than what the dock shows
    assert medsam.settings_scroll.widget().height() > medsam.settings_scroll.viewport().height()
    assert not medsam.model_section.expanded and not medsam.model_box.isVisible()

    _raise(win, "UniverSeg")
    dock = win.docks["UniverSeg"]
    for button in (universeg.segment_button, universeg.medsam_button, universeg.accept_button,
                   universeg.reject_button, universeg.cancel_button, universeg.add_accepted_check):
        assert _fully_visible(button, dock), button.text()
    # the run settings fold away; unfolding them shows them in the scroll area
    section = universeg.run_section
    assert not section.expanded and not universeg.support_size_spin.isVisible()
    section.header.click()
    try:
        assert section.expanded and universeg.support_size_spin.isVisible()
        _pump(0.2)
        universeg.settings_scroll.ensureWidgetVisible(universeg.weights_button)
        _pump(0.2)
        assert _fully_visible(universeg.weights_button, dock)
        assert _fully_visible(universeg.accept_button, dock)  # the actions have not moved away
    finally:
        section.header.click()
        universeg.settings_scroll.verticalScrollBar().setValue(0)
    assert not section.expanded


# ---------------------------------------------------------------- item 3: whole texts
def test_universeg_introduction_is_whole(win):
    _raise(win, "UniverSeg")
    intro = win.panels.universeg.intro
    assert intro.wordWrap()
    assert intro.height() >= intro.heightForWidth(intro.width())
    assert _fully_visible(intro, win.docks["UniverSeg"])
    scroll = win.panels.universeg.settings_scroll
    assert scroll.widget().width() <= scroll.viewport().width()  # nothing cut off at the right


def test_recovery_dialog_headers_are_whole(qapp, tmp_path):
    from medsam_gui.core.autosave_slots import RecoverableSession
    from medsam_gui.gui.recovery_dialog import RecoveryDialog

    item = RecoverableSession(slot=tmp_path, session_path=tmp_path / "s.medsam", name="slot",
                              scan_name="example_ct_sm", scan_path=str(tmp_path / "example_ct_sm.nii.gz"), saved_at=time.time(),
                              label_voxels={1: 12, 5: 12345})
    dlg = RecoveryDialog(None, [item])
    dlg.show()
    try:
        _pump(0.2)
        header = dlg.table.horizontalHeader()
        assert dlg.intro.wordWrap()
        for col, title in enumerate(RecoveryDialog.COLUMNS):
            assert header.sectionSize(col) >= header.sectionSizeHint(col), title  # whole titles
            if title != "Scan location":  # whole cells (a long path may end in "…": its tooltip)
                assert header.sectionSize(col) >= dlg.table.sizeHintForColumn(col), title
        assert dlg.table.item(0, 2).text() == "12,357 (label 1: 12; label 5: 12,345)"
        assert dlg.table.item(0, 3).toolTip() == item.scan_path
        assert sum(header.sectionSize(c) for c in range(4)) <= dlg.table.viewport().width()
    finally:
        dlg.close()


def test_wrong_checkpoint_names_the_model_and_the_download_stays_readable(win, qtbot, tmp_path):
    from litemedsam_helpers import golden_checkpoint

    from medsam_gui.gui.weights_dialog import WeightsDialog

    dlg = WeightsDialog(win.qt_window, "medsam_vit_b")
    qtbot.addWidget(dlg)
    dlg.show()
    _pump(0.1)
    dlg.choose_file(golden_checkpoint())
    qtbot.waitUntil(lambda: not dlg.busy, timeout=30_000)
    _pump(0.1)
    message = dlg.error_label.text()
    assert message.startswith("This file (lite_medsam.pth) is a LiteMedSAM checkpoint, not MedSAM (SAM ViT-B).")
    assert "image_encoder" not in message and "keys" not in message
    for label in (dlg.info_label, dlg.error_label):  # both paragraphs whole, word-wrapped
        assert label.wordWrap() and label.isVisible()
        assert label.height() >= label.heightForWidth(label.width()), label.text()[:40]
    assert "Download it here" in dlg.info_label.text()


def test_weights_dialog_link_is_readable_on_the_dark_theme(win, qtbot):
    from medsam_gui.gui import dialogs
    from medsam_gui.gui.weights_dialog import WeightsDialog

    dlg = WeightsDialog(win.qt_window, "medsam_vit_b")
    qtbot.addWidget(dlg)
    dlg.show()
    _pump(0.1)
    background = dlg.grab().toImage().pixelColor(3, 3)  # as drawn: napari's dark grey
    assert background.lightness() < 80
    link = dialogs.link_color(dlg)
    assert f"color: {link.name()}" in dlg.info_label.text()
    assert dialogs.contrast_ratio(link, background) >= 4.5
    # napari's palette link colour alone would be unreadable here
    assert dialogs.contrast_ratio(dlg.palette().color(dlg.palette().ColorRole.Link), background) < 4.5


# ---------------------------------------------------------------- item 4: measurements
def test_measurements_show_the_diameters_without_scrolling(win, qtbot):
    from medsam_gui.gui import measurements_panel as mp_module

    mp = win.panels.measurements
    _raise(win, "Measurements")
    qtbot.waitUntil(lambda: mp.table.rowCount() == 41, timeout=30_000)
    _pump(0.2)
    table, header = mp.table, mp.table.horizontalHeader()
    assert table.horizontalScrollBar().maximum() == 0
    for col in (mp_module.COL_LABEL, mp_module.COL_LONG, mp_module.COL_SHORT, mp_module.COL_VOLUME):
        rect = QRect(header.sectionViewportPosition(col), 0, header.sectionSize(col), 1)
        assert table.viewport().rect().contains(rect), mp_module.COLUMNS[col]
        assert header.sectionSize(col) >= table.sizeHintForColumn(col)  # numbers whole
        assert header.sectionSize(col) >= header.sectionSizeHint(col)  # title whole
    # the diameters come right after the name; the full titles are the tooltips
    assert [table.horizontalHeaderItem(c).text() for c in range(6)] == list(mp_module.HEADERS)
    assert table.horizontalHeaderItem(mp_module.COL_LONG).toolTip() == "Long axis (mm)"
    first = mp.row_values()[0]
    assert float(first["Long axis (mm)"]) >= float(first["Short axis (mm)"]) > 0


# ---------------------------------------------------------------- item 5: accepted slices as examples
LIVER = 5  # the demo labels' liver


def test_accepted_slices_join_the_examples_only_when_chosen(win, qtbot, demo_labels, universeg_state_dict):
    import numpy as np
    import SimpleITK as sitk
    import torch

    from medsam_gui.models.universeg import universeg_v1

    torch.set_num_threads(2)
    c, panel = win.controller, win.panels.universeg
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_labels)))
    labels = np.zeros(seg.shape, dtype=np.uint16)
    for z in (10, 12):
        labels[z][seg[z] == LIVER] = LIVER
    c.set_labels(labels)
    c.set_view("axial")
    c.set_active_label(LIVER)
    panel.set_model(universeg_v1(universeg_state_dict))
    panel.device_combo.setCurrentText("cpu")
    panel.support_size_spin.setValue(8)
    panel.refresh_support()
    assert panel.add_accepted_check.isChecked()  # the behaviour so far is the default
    assert panel.support_slices() == [10, 12] and panel.planned_targets() == [11]

    def run_and_accept() -> None:
        qtbot.mouseClick(panel.segment_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: not panel.running and panel.proposal_slices() == [11], timeout=60_000)
        qtbot.mouseClick(panel.accept_button, Qt.MouseButton.LeftButton)
        assert (c.display_labels()[11] == LIVER).any()

    run_and_accept()  # ticked: slice 11 joins the examples, and the status bar says so
    qtbot.waitUntil(lambda: panel.support_slices() == [10, 11, 12], timeout=5000)
    assert "now join the support set as examples" in win.status_text()

    c.undo()
    qtbot.waitUntil(lambda: panel.support_slices() == [10, 12], timeout=5000)
    qtbot.mouseClick(panel.add_accepted_check, Qt.MouseButton.LeftButton)  # unticked: kept out
    assert not panel.add_accepted_check.isChecked()
    try:
        run_and_accept()
        assert "kept out of the support set" in win.status_text()
        _pump(0.5)  # past the support list's refresh after the label edit
        assert panel.support_slices() == [10, 12] and panel.labeled() == [10, 11, 12]
        assert config.get_setting("universeg_panel")["add_accepted"] is False  # remembered
    finally:
        panel.add_accepted_check.setChecked(True)
