"""The Auto-segment dock in the real app (and the napari plugin), driven through its widgets with
the stand-in segmenter on the demo CT: searchable structure list, Run in the background with
progress and Cancel, the proposal layer, Reject, Accept into new named labels (existing labels
kept, one undo step, on the scan's exact grid), and the weights dialog when the files are missing.
The napari plugin's widget: tests/test_auto_plugin.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from qtpy.QtCore import Qt

from auto_stand_in import RULES, StandInSegmenter, spec
from medsam_gui.gui.auto_panel import AutoPanel
from medsam_gui.models import auto_models

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def stand_ins():
    """The stand-in catalogues and loaders in place of Hermes' and the Universal Model's."""
    with auto_models.registered(spec("hermes")), auto_models.registered(spec("universal")):
        yield


@pytest.fixture(scope="module")
def window(module_app_window, demo_scan, stand_ins):
    from medsam_gui.gui import auto_panel

    return module_app_window(str(demo_scan), install_panels=False, panels={"auto": auto_panel.install})


@pytest.fixture
def panel(window, qtbot):
    p = window.panels.auto
    window.raise_dock("Auto-segment")
    qtbot.waitUntil(p.isVisible, timeout=5000)
    yield p
    p.cancel()
    window.controller.wait_idle(30)
    p.reject()


def _rule(vol, key):
    _, _, _, lo, hi = RULES[key]
    return (vol.array >= lo) & (vol.array < hi)


def _tick(qtbot, lst, titles):
    """Toggle the check boxes of the items whose text starts with one of ``titles`` (Space key)."""
    for r in range(lst.count()):
        item = lst.item(r)
        if any(item.text().startswith(t + ":") or item.text().startswith(t + "  (") for t in titles):
            lst.setCurrentItem(item)
            qtbot.keyClick(lst, Qt.Key.Key_Space)


def test_panel_lists_and_filters_structures(window, panel, qtbot):
    assert isinstance(panel, AutoPanel) and "load_auto_weights" in window.actions
    panel.set_segmenter(StandInSegmenter("hermes"))
    lst = panel.structure_list
    assert [lst.item(r).text() for r in range(lst.count())] == [
        "Body  (CT/MR)", "Soft tissue  (CT)", "Bone  (CT)", "Dense bone  (CT)"]
    assert "Source: stand-in: 200 <= value < inf" in lst.item(2).toolTip()
    assert panel.modality_combo.currentText() == "CT"  # from the scan
    qtbot.keyClicks(panel.filter_edit, "bone")
    assert [lst.item(r).isHidden() for r in range(4)] == [True, True, False, False]
    assert panel.selection_label.text() == "0 ticked of 4 (2 shown)."
    panel.filter_edit.clear()
    assert not panel.run_button.isEnabled()
    _tick(qtbot, lst, ["Bone", "Body"])
    panel.modality_combo.setCurrentText("MR")  # the user corrects the modality
    assert panel.selection_label.text() == "2 ticked of 4 (4 shown). Not learnt on MR: Bone."
    assert panel.run_button.isEnabled()
    _tick(qtbot, lst, ["Bone", "Body"])
    panel.modality_combo.setCurrentText("CT")
    assert [panel.quality_combo.itemData(i) for i in range(3)] == [0.5, 0.25, 0.0]


def test_run_review_accept_one_undo_step(window, panel, qtbot):
    c = window.controller
    vol = c.volume
    seg = StandInSegmenter("hermes")
    panel.set_segmenter(seg)
    # an existing label over part of the bone: accepting must not touch it
    existing = c.add_label("existing")
    disp_bone = c.orientation.to_display(_rule(vol, "bone"))
    k = int(np.argmax(disp_bone.sum(axis=(1, 2))))
    c.write_slice_mask(0, k, disp_bone[k], existing.value)
    before = c.source_labels().copy()

    _tick(qtbot, panel.structure_list, ["Soft tissue", "Bone", "Dense bone"])
    panel.quality_combo.setCurrentIndex(1)
    with qtbot.waitSignal(panel.run_finished, timeout=20000) as finished:
        qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    assert finished.args == ["done"]
    total = len(seg.window_starts(vol.shape[0], 0.25))
    assert seg.calls[-1] == {"keys": ["soft_tissue", "bone", "dense_bone"], "modality": "CT", "overlap": 0.25}
    assert panel.last_run["windows"] == (total, total)
    assert panel.proposal_keys() == ["soft_tissue", "bone", "dense_bone"]
    shown = auto_models.label_map([_rule(vol, k) for k in ("soft_tissue", "bone", "dense_bone")])
    np.testing.assert_array_equal(panel.proposal_layer.data, c.orientation.to_display(shown))
    assert np.array_equal(c.source_labels(), before)  # nothing written yet

    _tick(qtbot, panel.proposal_list, ["Bone", "Dense bone"])  # untick them: only soft tissue stays ticked
    qtbot.mouseClick(panel.reject_button, Qt.MouseButton.LeftButton)
    assert panel.proposal_keys() == ["bone", "dense_bone"]
    with qtbot.waitSignal(c.labels_changed, timeout=5000):
        qtbot.mouseClick(panel.accept_all_button, Qt.MouseButton.LeftButton)
    assert panel.proposal is None and panel.proposal_layer is None
    bone_info, dense_info = (next(i for i in c.label_table if i.name == n) for n in ("Bone", "Dense bone"))
    assert len({bone_info.color, dense_info.color, existing.color}) == 3
    got = c.source_labels()  # the scan's own (z, y, x) grid
    bone, dense = _rule(vol, "bone"), _rule(vol, "dense_bone")
    kept = before == existing.value
    np.testing.assert_array_equal(got == existing.value, kept)
    np.testing.assert_array_equal(got == dense_info.value, dense & ~kept)
    np.testing.assert_array_equal(got == bone_info.value, bone & ~dense & ~kept)

    get_state, set_state = c.state_providers["auto_segment"]  # saved with the autosave / session
    state = get_state()
    assert [(a["key"], a["value"], a["overlap"]) for a in state["accepted"]] == [
        ("bone", bone_info.value, 0.25), ("dense_bone", dense_info.value, 0.25)]
    assert state["ticked"]["hermes"] == ["bone", "dense_bone", "soft_tissue"]

    window.actions["undo"].trigger()  # ONE step takes both structures away
    np.testing.assert_array_equal(c.source_labels(), before)
    set_state({**state, "ticked": {"hermes": ["body"]}, "overlap": 0.0})
    assert [s.key for s in panel.checked_structures()] == ["body"] and panel.overlap == 0.0
    assert panel.accepted == state["accepted"]


def test_cancel_stops_between_windows(window, panel, qtbot):
    gate = threading.Event()
    seg = StandInSegmenter("hermes", gate=gate)
    panel.set_segmenter(seg)
    panel.set_checked(["body"])
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    assert panel.running and panel.cancel_button.isEnabled()
    with qtbot.waitSignal(panel.run_finished, timeout=5000) as finished:
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    gate.set()
    window.controller.wait_idle(20)
    assert finished.args == ["cancelled"] and panel.proposal is None and panel.proposal_layer is None
    assert panel.progress_label.text() == "Cancelled: nothing was proposed." and panel.run_button.isEnabled()


def test_missing_weights_open_the_dialog_with_licence(window, panel, qtbot):
    panel.set_model("universal")
    panel.set_checked(["body"])
    assert not panel.run()
    dlg = panel.weights_dialog
    qtbot.waitUntil(dlg.isVisible, timeout=5000)
    assert dlg.model.name == "universal_model" and "CC BY-NC-ND 4.0" in dlg.licence_label.text()
    assert not dlg.download_button.isEnabled() and not panel.running
    dlg.reject()
    panel.set_model("hermes")
