"""UniverSeg dock (gui/universeg_panel.py) with real widgets on the demo CT and its liver labels.

The model is UniverSeg v1 with the golden random weights (tests/golden/universeg_v1_seed1234_S8.pt):
its masks are not anatomical, but every step of the viewer workflow (support from the labeled
slices, windowing as displayed, targets, proposal layer, accept as one undo step, reject,
cancel, example sets across scans, weights dialog) is checked against the core functions.
Few target slices per run: ~1 s of CPU per target slice.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from qtpy.QtCore import Qt

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT / "resources" / "demo" / "example_ct_sm.nii.gz"
CT_SEG = ROOT / "resources" / "demo" / "example_seg.nii.gz"
LIVER, SPLEEN = 5, 1


@pytest.fixture(scope="module")
def model(universeg_state_dict):
    from medsam_gui.models.universeg import universeg_v1

    return universeg_v1(universeg_state_dict)


@pytest.fixture(scope="module")
def ct_seg():
    return sitk.GetArrayFromImage(sitk.ReadImage(str(CT_SEG)))


@pytest.fixture(scope="module")
def win(module_app_window):
    """The window with the UniverSeg panel alone (``win.panels.universeg``), built in the
    module's home (module objects are built before the per-test home exists)."""
    from medsam_gui.gui import universeg_panel

    torch.set_num_threads(2)
    return module_app_window(show=True, install_panels=False, size=(1300, 900),
                             panels={"universeg": universeg_panel.install})


def _partial(seg, slices, value=LIVER, extra=()):
    """Label map (z, y, x) with ``value`` of the reference on ``slices`` only (+ extra (v, slices))."""
    lab = np.zeros(seg.shape, dtype=np.uint16)
    for v, zs in ((value, slices), *extra):
        for z in zs:
            lab[z][seg[z] == v] = v
    return lab


@pytest.fixture
def c(win, model, ct_seg, monkeypatch):
    """Controller on the demo CT (display axis 0 = z for this scan); panel reset, golden model."""
    from medsam_gui.gui import dialogs

    monkeypatch.setattr(dialogs, "ask_unsaved", lambda parent, what: "discard")
    ctrl = win.controller
    panel = win.panels.universeg
    if panel.running:
        panel.cancel()
    panel.reject()
    panel.set_pinned(False)
    if ctrl.volume is None or Path(ctrl.volume.path).name != CT.name:
        ctrl.open_scan(CT, confirm=False)
        ctrl.wait_idle(60)
    ctrl.set_labels(np.zeros(ct_seg.shape, dtype=np.uint16))
    ctrl.set_view("axial")
    panel.set_model(model)
    panel.support_size_spin.setValue(8)
    panel.ensemble_spin.setValue(1)
    panel.batch_spin.setValue(0)
    panel.device_combo.setCurrentText("cpu")
    panel.all_labels_check.setChecked(False)
    panel.overwrite_check.setChecked(False)
    yield ctrl
    for box in list(ctrl.error_boxes):
        box.close()
    ctrl.error_boxes.clear()


def _setup(c, panel, labels, active=LIVER):
    c.set_labels(labels)
    c.set_active_label(active)
    panel._range_user_set = False
    panel.refresh_support()


def _run(qtbot, panel, button=None, timeout=90_000):
    (button or panel.segment_button).click()
    assert panel.running
    qtbot.waitUntil(lambda: not panel.running, timeout=timeout)


def test_segment_rest_proposal_accept_is_one_undo_step(win, c, qtbot, ct_seg, model):
    from medsam_gui.models import incontext as ic

    panel = win.panels.universeg
    # liver on 3 slices as support; spleen drawn on the slices in between (must survive Accept)
    _setup(c, panel, _partial(ct_seg, (10, 12, 14), extra=((SPLEEN, range(9, 16)),)))
    before = c.display_labels().copy()
    assert ic.labeled_slices(before, LIVER, 0) == [10, 12, 14]
    assert panel.support_slices() == [10, 12, 14]
    assert panel.planned_targets() == [11, 13]
    _run(qtbot, panel)

    # exactly the unlabeled slices between the first and last support slice are proposed
    assert panel.proposal_slices() == [11, 13]
    assert panel.last_run["support_slices"] == [10, 12, 14]
    layer = panel.proposal_layer
    assert layer is not None and layer.name == "UniverSeg proposal"
    assert layer.data.shape == before.shape
    assert np.allclose(layer.scale, c.labels_layer.scale)
    assert tuple(layer.units) == tuple(c.labels_layer.units)  # mm like the scan: no napari warning
    res = panel.proposal.results[LIVER]
    assert set(np.flatnonzero(layer.data.reshape(len(layer.data), -1).any(1))) <= {11, 13}
    for i in (11, 13):
        m = res.mask(i)
        assert 0 < m.sum() < m.size  # a real, non-trivial mask
        assert np.array_equal(layer.data[i] == LIVER, m)
    # the GUI run equals the core function on the display volume, windowed as displayed
    ref = ic.segment_rest(c.display_volume(), before, LIVER, model=model, bounds=c.window_bounds,
                          support_size=8, targets=[13], device="cpu")
    assert np.abs(res.probabilities[13].astype(np.float32) - ref.probabilities[13].astype(np.float32)).max() < 2e-3
    assert np.array_equal(c.display_labels(), before)  # nothing written before Accept

    panel.accept_button.click()
    after = c.display_labels()
    assert panel.proposal_layer is None and "UniverSeg proposal" not in [l.name for l in c.viewer.layers]
    for z in (10, 12, 14):  # user slices bit for bit
        assert np.array_equal(after[z], before[z])
    for i in (11, 13):
        expected = before[i].copy()
        expected[res.mask(i) & (before[i] == 0)] = LIVER
        assert np.array_equal(after[i], expected)
        assert np.array_equal(after[i] == SPLEEN, before[i] == SPLEEN)  # other label kept
    others = [z for z in range(len(after)) if z not in (11, 13)]
    assert np.array_equal(after[others], before[others])
    c.undo()  # ONE undo step removes all of it
    assert np.array_equal(c.display_labels(), before)


def test_reject_changes_nothing(win, c, qtbot, ct_seg):
    panel = win.panels.universeg
    _setup(c, panel, _partial(ct_seg, (10, 12)))
    before = c.display_labels().copy()
    _run(qtbot, panel)
    assert panel.proposal_slices() == [11]
    assert panel.proposal_layer is not None
    panel.reject_button.click()
    assert panel.proposal is None and panel.proposal_layer is None
    assert np.array_equal(c.display_labels(), before)
    assert not panel.accept_button.isEnabled()


def test_fill_from_medsam_boxes_and_per_slice_accept(win, c, qtbot, ct_seg, monkeypatch):
    panel = win.panels.universeg
    _setup(c, panel, _partial(ct_seg, (10, 12, 14)))
    box = (10.0, 10.0, 60.0, 60.0)
    # the MedSAM panel's API: key boxes of the active label on this axis (slice 20 has no mask)
    assert panel.medsam is None and panel.medsam_slices() == []  # installed without a MedSAM panel
    monkeypatch.setattr(panel, "medsam", SimpleNamespace(
        key_boxes=lambda axis, label: {10: box, 14: box, 20: box} if (axis, label) == (0, LIVER) else {}))
    assert panel.medsam_slices() == [10, 14]
    assert "MedSAM" in panel.medsam_button.toolTip() and "3–5" in panel.medsam_button.toolTip()
    before = c.display_labels().copy()
    _run(qtbot, panel, panel.medsam_button)
    assert panel.last_run["support_slices"] == [10, 14]
    assert panel.proposal_slices() == [11, 13]  # slice 12 is the user's: never a target
    res = panel.proposal.results[LIVER]
    panel.set_slice_checked(11, False)
    assert not panel.proposal_layer.data[11].any() and panel.proposal_layer.data[13].any()
    assert panel.checked_slices() == [13]
    panel.accept_button.click()
    after = c.display_labels()
    assert np.array_equal(after[11], before[11])
    assert np.array_equal(after[13] == LIVER, res.mask(13))
    c.undo()
    assert np.array_equal(c.display_labels(), before)


def test_cancel_keeps_partial_proposal(win, c, qtbot, ct_seg):
    panel = win.panels.universeg
    _setup(c, panel, _partial(ct_seg, (10, 16)))
    panel.batch_spin.setValue(1)
    before = c.display_labels().copy()
    targets = panel.planned_targets()
    assert targets == [11, 12, 13, 14, 15]
    panel.segment_button.click()
    qtbot.waitUntil(lambda: len(panel.proposal_slices()) >= 1, timeout=60_000)
    panel.cancel_button.click()
    assert not panel.running
    qtbot.wait(50)
    got = panel.proposal_slices()
    assert 1 <= len(got) < len(targets) and set(got) <= set(targets)
    assert panel.proposal.cancelled and not panel.proposal.complete
    assert panel.accept_button.isEnabled() and panel.reject_button.isEnabled()
    assert np.array_equal(c.display_labels(), before)
    panel.reject()
    assert np.array_equal(c.display_labels(), before)


def test_support_list_thumbnails_add_remove_pin(win, c, ct_seg):
    panel = win.panels.universeg
    _setup(c, panel, _partial(ct_seg, (10, 13, 16)))
    assert panel.support_slices() == [10, 13, 16]
    lst = panel.support_list
    assert lst.count() == 3
    assert [panel.support_items()[lst.item(r).data(Qt.ItemDataRole.UserRole)].index for r in range(3)] == [10, 13, 16]
    assert all(not icon.isNull() for icon in panel.thumbnail_icons())
    for it in panel.support_items():
        assert it.image.shape == (128, 128) and it.mask.shape == (128, 128) and it.mask.any()
        th = panel.thumbnail(it)
        assert th.shape == (48, 48, 3)
        grey = (th[..., 0] == th[..., 1]) & (th[..., 1] == th[..., 2])
        pick = np.arange(48) * 128 // 48
        assert np.array_equal(~grey, it.mask[np.ix_(pick, pick)] > 0)  # colour exactly on the mask
    # the image is windowed as displayed: the support image equals the windowed slice
    lo, hi = c.window_bounds
    from medsam_gui.core.support_set import resize_images, window_unit

    ref = resize_images(window_unit(c.display_volume()[13][None], (lo, hi)))[0]
    assert np.allclose(panel.support_items()[1].image, ref, atol=1e-6)
    # add the slice on screen (no liver there: a negative example) and remove one
    c.set_current_slice(0, 20)
    panel.add_button.click()
    assert panel.support_slices() == [10, 13, 16, 20]
    assert not panel.support_items()[3].mask.any() and "negative" in lst.item(3).text()
    lst.item(1).setSelected(True)
    panel.remove_button.click()
    assert panel.support_slices() == [10, 16, 20]
    assert panel.planned_targets() == [11, 12, 14, 15]  # removed slice 13 is still the user's
    # pinned: frozen, no longer follows the labels
    panel.pin_check.setChecked(True)
    c.set_labels(_partial(ct_seg, (5,)))
    panel.refresh_support()
    assert panel.support_slices() == [10, 16, 20]
    # the pinned set is session state (plain arrays, support_sets convention) and comes back
    state = panel.get_state()
    sup = state["support_sets"][LIVER]
    assert state["pinned"] and sup["images"].shape == (3, 128, 128) and sup["labels"].dtype == np.uint8
    assert sup["indices"].tolist() == [10, 16, 20]
    panel.pin_check.setChecked(False)
    assert panel.support_slices() == [5]
    assert panel.get_state() == {"pinned": False}
    panel.set_state(state)
    assert panel.pin_check.isChecked() and panel.support_slices() == [10, 16, 20]
    assert np.array_equal(np.stack([it.mask for it in panel.support_items()]), sup["labels"])
    assert "universeg_support" in c.state_providers  # registered for autosave at install
    assert set(state["support"]["origins"]) == {"pinned", "added"}
    assert state["support"]["sources"] == [c.volume.name] * 3


def test_example_set_round_trip_and_other_scan(win, c, qtbot, ct_seg, tmp_path, monkeypatch, data_dir):
    from medsam_gui.core.example_sets import load_example_set
    from medsam_gui.gui import universeg_support_list as up

    panel = win.panels.universeg
    _setup(c, panel, _partial(ct_seg, (10, 13, 16)))
    ct_items = panel.support_items()
    ct_name = ct_items[0].source
    out = tmp_path / "liver_examples.npz"
    monkeypatch.setattr(up, "ask_example_set_save_path", lambda parent, suggested: str(out))
    panel.save_set_button.click()
    es = load_example_set(out)
    assert es.images.shape == (3, 128, 128) and es.masks.shape == (3, 128, 128)
    assert es.indices == (10, 13, 16) and es.label_value == LIVER and es.axis == 0
    assert es.bounds == pytest.approx(c.window_bounds) and es.modality == c.volume.modality
    assert np.allclose(es.images, np.stack([it.image for it in ct_items]), atol=1e-3)
    assert np.array_equal(es.masks, np.stack([it.mask for it in ct_items]))

    # keep the support set while another scan (hippocampus MR, other shape) opens
    panel.pin_check.setChecked(True)
    hippo = data_dir / "msd_hippocampus" / "hippocampus_003_image.nii.gz"
    c.open_scan(hippo, confirm=False)
    c.wait_idle(60)
    assert Path(c.volume.path).name == hippo.name
    assert panel.support_slices() == [10, 13, 16]
    assert all(it.source == ct_name for it in panel.support_items())
    panel.pin_check.setChecked(False)
    assert panel.support_slices() == []  # nothing labeled on the hippocampus

    # load the example set from disk through the panel and use it on this scan
    monkeypatch.setattr(up, "ask_example_set_open_path", lambda parent: str(out))
    panel.load_set_button.click()
    assert panel.pin_check.isChecked() and panel.support_slices() == [10, 13, 16]
    assert np.allclose(np.stack([it.image for it in panel.support_items()]), es.images)
    shape = c.display_labels().shape
    label = c.active_label
    panel.set_range(15, 16)
    assert panel.planned_targets() == [15, 16]
    before = c.display_labels().copy()
    _run(qtbot, panel)
    assert panel.proposal_slices() == [15, 16]
    res = panel.proposal.results[label]
    assert res.probabilities[15].shape == shape[1:] and panel.proposal_layer.data.shape == shape
    panel.accept()
    after = c.display_labels()
    for i in (15, 16):
        assert np.array_equal(after[i] == label, res.mask(i))
    rest = [z for z in range(shape[0]) if z not in (15, 16)]
    assert np.array_equal(after[rest], before[rest])


def test_all_labels_combined_without_overlap(win, c, qtbot, ct_seg):
    panel = win.panels.universeg
    _setup(c, panel, _partial(ct_seg, (10, 12), extra=((SPLEEN, (10, 12)),)))
    panel.all_labels_check.setChecked(True)
    before = c.display_labels().copy()
    _run(qtbot, panel)
    assert panel.last_run["labels"] == [SPLEEN, LIVER]
    assert panel.proposal_slices() == [11]
    p1 = panel.proposal.results[SPLEEN].probabilities[11].astype(np.float32)
    p5 = panel.proposal.results[LIVER].probabilities[11].astype(np.float32)
    expected = np.where(p5 > p1, LIVER, SPLEEN)
    expected[np.maximum(p1, p5) <= 0.5] = 0
    assert np.array_equal(panel.proposal_layer.data[11], expected)
    assert (expected == LIVER).any() or (expected == SPLEEN).any()
    panel.accept()
    assert np.array_equal(c.display_labels()[11], expected)
    others = [z for z in range(len(before)) if z != 11]
    assert np.array_equal(c.display_labels()[others], before[others])
    c.undo()
    assert np.array_equal(c.display_labels(), before)


def test_missing_weights_dialog_choose_file(win, c, qtbot, ct_seg, universeg_state_dict, tmp_path, monkeypatch):
    from medsam_gui.models import weights as manager

    panel = win.panels.universeg
    _setup(c, panel, _partial(ct_seg, (10, 12)))
    panel.set_model(None)
    assert manager.resolve("universeg_v1") is None
    panel.segment_button.click()
    dlg = panel.weights_dialog
    assert dlg is not None and dlg.isVisible() and not panel.running
    text = dlg.info_label.text()
    assert "universeg_v1_nf64_ss64_STA.pt" in text and manager.get_model("universeg_v1").url in text
    # a wrong file is refused with a message; the dialog stays open
    bad = tmp_path / "notes.pt"
    bad.write_bytes(b"not a checkpoint")
    dlg.choose_file(bad)
    qtbot.waitUntil(lambda: not dlg.busy, timeout=20_000)
    assert dlg.error_label.isVisible() and dlg.error_label.text()
    assert panel.model is None and dlg.isVisible()
    # the right file (through the dialog's own file picker): validated, remembered, the run starts
    good = tmp_path / "universeg_v1_nf64_ss64_STA.pt"
    torch.save(universeg_state_dict, good)
    from medsam_gui.gui import weights_dialog

    monkeypatch.setattr(weights_dialog, "ask_weights_file", lambda parent, title="": str(good))
    dlg.choose_button.click()
    qtbot.waitUntil(lambda: panel.model is not None and not dlg.busy, timeout=20_000)
    assert manager.resolve("universeg_v1") == good.resolve()
    qtbot.waitUntil(lambda: panel.proposal is not None and not panel.running, timeout=60_000)
    assert panel.proposal_slices() == [11]
    panel.reject()


def test_batches_off_screen_do_not_redraw_and_a_rerun_reuses_the_layer(win, c, qtbot, ct_seg):
    """GUI-thread work per batch: the proposal layer is redrawn only when a changed slice is on
    screen (a canvas redraw costs ~50 ms per batch), off-screen slices show the right data when
    the user goes there, the list's pixel counts are right, and a new run while a proposal is
    shown reuses its layer (napari needs ~0.5 s of GUI thread to add one)."""
    from medsam_gui.models.incontext_proposal import Proposal

    panel = win.panels.universeg
    _setup(c, panel, _partial(ct_seg, (10, 14)))
    panel.batch_spin.setValue(1)  # one batch per target slice
    c.set_current_slice(0, 5)  # not a target
    combined_calls = []
    real_combined = Proposal.combined

    def counting_combined(self, index):
        combined_calls.append(int(index))
        return real_combined(self, index)

    mp = pytest.MonkeyPatch()
    mp.setattr(Proposal, "combined", counting_combined)
    refreshes = []
    try:
        panel.segment_button.click()
        layer = panel.proposal_layer
        assert layer is not None
        real_refresh = layer.refresh
        mp.setattr(layer, "refresh", lambda *a, **k: (refreshes.append(c.current_slice(0)), real_refresh(*a, **k)))
        qtbot.waitUntil(lambda: not panel.running, timeout=90_000)
    finally:
        mp.undo()
    targets = [11, 12, 13]
    assert panel.proposal_slices() == targets
    # batches for slices 11-13 did not redraw (slice 5 on screen); the run's end redrew once
    assert refreshes == [5]
    # each slice's mask computed once (painting), not again for the list after every batch
    assert sorted(combined_calls) == targets
    items = [panel.proposal_list.item(k).text() for k in range(panel.proposal_list.count())]
    res = panel.proposal.results[LIVER]
    assert items == [f"slice {i}: {int(res.mask(i).sum()):,} px" for i in targets]
    # going to an off-screen slice shows its proposal
    c.set_current_slice(0, 12)
    qtbot.wait(50)
    shown = np.asarray(layer._slice.image.raw)
    assert np.array_equal(shown == LIVER, res.mask(12)) and shown.any()

    # a new run with the proposal still shown: same layer object, only the new run's slices
    _setup(c, panel, _partial(ct_seg, (10, 12)))
    _run(qtbot, panel)
    assert panel.proposal_layer is layer and layer in c.viewer.layers
    assert panel.proposal_slices() == [11]
    painted = np.flatnonzero(layer.data.reshape(len(layer.data), -1).any(1)).tolist()
    assert painted == [11]
    # a run that cannot start removes the emptied layer
    _setup(c, panel, np.zeros(ct_seg.shape, dtype=np.uint16))
    panel.segment_button.click()
    assert panel.proposal is None and panel.proposal_layer is None
    for box in list(c.error_boxes):
        box.close()
    c.error_boxes.clear()


def test_install_wiring(win, c):
    """install(): Models menu entry, session state provider, change notices."""
    panel = win.panels.universeg
    act = win.actions["load_universeg_weights"]
    assert act.text() == "Load UniverSeg weights…"
    get_state, set_state = c.state_providers["universeg_support"]
    assert get_state() == {"pinned": False} and set_state.__self__ is panel
    notices = []

    def heard():
        notices.append(1)

    c.state_changed.connect(heard)
    try:
        panel.set_pinned(True)  # a pinned set is session state: autosave hears of it
        assert notices
    finally:
        c.state_changed.disconnect(heard)
        panel.set_pinned(False)


def test_support_follows_slice_writes_and_groups(win, c, ct_seg):
    """Boxes and propagation write one slice at a time: the controller names it while
    ``labels_changed`` is emitted and the panel's labeled slices follow (only a group spanning
    several slices, or a paint stroke, names none)."""
    panel = win.panels.universeg
    _setup(c, panel, _partial(ct_seg, (10, 13, 16)))
    seen = []

    def record():
        seen.append(c.edited_slice)

    c.labels_changed.connect(record)
    try:
        c.write_slice_mask(0, 20, ct_seg[20] == LIVER, LIVER)
        c.write_slice_mask(0, 13, np.zeros_like(ct_seg[13], bool), LIVER)  # the liver leaves slice 13
        panel.refresh_support()
        assert panel.support_slices() == [10, 16, 20]
        with c.edit_group():
            c.write_slice_mask(0, 22, ct_seg[22] == LIVER, LIVER)
        with c.edit_group():
            c.write_slice_mask(0, 23, ct_seg[23] == LIVER, LIVER)
            c.write_slice_mask(0, 10, np.zeros_like(ct_seg[10], bool), LIVER)
        panel.refresh_support()
        assert panel.support_slices() == [16, 20, 22, 23]
        assert panel.planned_targets() == [17, 18, 19, 21]
    finally:
        c.labels_changed.disconnect(record)
    assert seen == [(0, 20), (0, 13), (0, 22), None]
    assert c.edited_slice is None


def test_hidden_panel_is_rebuilt_when_shown_or_asked(win, c, qtbot, ct_seg):
    """Behind another dock the support list is not rebuilt after every edit (no thumbnails made
    for nobody); showing the panel, or asking it for its support, brings it up to date."""
    from medsam_gui.gui.universeg_panel import REFRESH_MS

    panel = win.panels.universeg
    _setup(c, panel, _partial(ct_seg, (10, 13)))
    assert panel.support_list.count() == 2
    panel.hide()
    try:
        c.write_slice_mask(0, 16, ct_seg[16] == LIVER, LIVER)
        qtbot.wait(REFRESH_MS + 200)
        assert panel.support_list.count() == 2
    finally:
        panel.show()
    assert panel.support_list.count() == 3 and "3 examples" in panel.support_label.text()
    panel.hide()
    try:
        c.write_slice_mask(0, 19, ct_seg[19] == LIVER, LIVER)
        assert panel.support_slices() == [10, 13, 16, 19]
    finally:
        panel.show()
