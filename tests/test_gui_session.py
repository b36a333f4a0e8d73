"""Never lose work (issue 7, viewer side): autosave from the GUI, session files through the
File menu, moved / different scans, autosave failures, clean quit, recovery offer, and
memory-budgeted undo.

One window (the demo CT, 122 x 101 x 30) with ``medsam_gui.gui.session`` installed is shared
by most tests; its autosave folder lives in a temporary MEDSAM_GUI_HOME of its own.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medsam_gui import config
from medsam_gui.core.autosave_slots import find_recoverable
from medsam_gui.core import session as core_session
from medsam_gui.core.session import load_session

pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parent.parent
HIPPO = "msd_hippocampus/hippocampus_001_image.nii.gz"


@pytest.fixture(scope="module")
def win(module_app_window):
    """The demo CT with the session manager (no recovery offer), built in the module's home
    (``win.home``: autosave slots live under it)."""
    from medsam_gui.gui import session as gs

    w = module_app_window(demo=True, show=True, install_panels=False, size=(1200, 800),
                          panels={"session": lambda controller: gs.install(controller, offer=False)})
    w.home = module_app_window.home
    return w


@pytest.fixture
def c(win, monkeypatch, qtbot):
    from medsam_gui.gui import dialogs

    monkeypatch.setattr(dialogs, "ask_unsaved", lambda parent, what: "discard")
    ctrl = win.controller
    ctrl.wait_idle(60)
    if ctrl.volume is None or not ctrl.volume.path.endswith("example_ct_sm.nii.gz"):
        ctrl.open_scan(config.demo_scan_path(), confirm=False)
        ctrl.wait_idle(60)
    ctrl.set_labels(np.zeros(ctrl.volume.shape, np.uint16))
    ctrl.last_error = None
    yield ctrl
    ctrl.wait_idle(60)
    for box in list(ctrl.error_boxes):
        try:
            box.close()
        except RuntimeError:
            pass
    ctrl.error_boxes.clear()


@pytest.fixture
def mgr(win, c):
    m = win.panels.session
    old = m.autosave.interval_s
    m.autosave.interval_s = 0.2
    yield m
    m.autosave.interval_s = old
    for name in list(c.state_providers):
        c.unregister_state_provider(name)


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _digest(arr) -> str:
    return hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _wait_saved_equal(qtbot, m, c, timeout=8000):
    """Wait until the newest autosave holds exactly the controller's labels; return it."""
    want = np.array(c.source_labels())
    box = {}

    def ok():
        p = m.autosave.last_saved_path
        if p is None or not Path(p).exists():
            return False
        try:
            s = load_session(p)
        except Exception:
            return False
        box["s"] = s
        return s.labels is not None and np.array_equal(s.labels, want)

    qtbot.waitUntil(ok, timeout=timeout)
    return box["s"]


# ------------------------------------------------------------------------------------------
def test_menu_entries_and_shortcuts(win):
    from qtpy.QtGui import QKeySequence

    acts = win.actions
    for name in ("save_session", "open_session", "recover_sessions"):
        assert name in acts
    assert acts["save_session"].shortcut() == QKeySequence("Ctrl+Shift+S")
    # "Save labels as…" keeps working on a shortcut of its own (no ambiguous Ctrl+Shift+S)
    assert acts["save_labels_as"].shortcut() == QKeySequence("Ctrl+Alt+S")
    file_menu = [o for o in acts["save_labels"].associatedObjects() if o.__class__.__name__ == "QMenu"][0]
    texts = [a.text() for a in file_menu.actions() if not a.isSeparator()]
    assert texts.index("Save session…") > texts.index("Save labels as…")
    assert "Open session…" in texts and "Recover unsaved work…" in texts
    keys = [a.shortcut().toString() for a in file_menu.actions() if not a.shortcut().isEmpty()]
    assert len(keys) == len(set(keys)), keys


def test_autosave_after_edits_lands_in_user_data_folder(win, c, mgr, qtbot):
    layer = c.labels_layer
    shape = c.display_labels().shape
    c.write_slice_mask(0, 12, _disk(shape[1:], 50, 60, 8), 1)  # a model edit
    layer.paint((14, 40, 40), 2)                                  # a napari brush stroke
    c.rename_label(1, "liver")
    c.set_window(-100.0, 200.0)
    s = _wait_saved_equal(qtbot, mgr, c)
    slot = mgr.autosave.slot
    assert slot.parent == Path(win.home) / "data" / "sessions"
    assert Path(mgr.autosave.last_saved_path).parent == slot
    assert not str(mgr.autosave.last_saved_path).startswith(str(Path(c.volume.path).parent))
    assert s.scan.path == str(Path(c.volume.path).absolute()) and s.scan.matches(c.volume)
    assert s.window == (-100.0, 200.0)
    assert s.label_table["labels"][0]["name"] == "liver"
    assert set(np.unique(s.labels)) == {0, 1, 2}
    # an edit made right after a snapshot is picked up by the poll timer
    c.write_slice_mask(0, 20, _disk(shape[1:], 30, 30, 5), 1)
    _wait_saved_equal(qtbot, mgr, c)
    # the GUI-thread part is a copy of the labels and small data
    t0 = time.perf_counter()
    for _ in range(5):
        mgr.snapshot()
    per = (time.perf_counter() - t0) / 5
    print(f"snapshot of {c.volume.array.size * 2 / 1e6:.1f} MB labels: {per * 1e3:.2f} ms")
    assert per < 0.25


def test_save_and_open_session_round_trip_through_menu(win, c, mgr, qtbot, tmp_path, monkeypatch):
    from medsam_gui.gui import session_files

    shape = c.display_labels().shape
    for z, lab in ((5, 1), (10, 2), (15, 3)):
        c.write_slice_mask(0, z, _disk(shape[1:], 50, 60, 6 + z // 2), lab)
    c.rename_label(2, "kidney")
    c.recolor_label(3, (0.1, 0.2, 0.9, 1.0))
    c.set_window(-350.0, 50.0)
    c.set_current_slice(0, 7)

    images = np.random.default_rng(1).random((3, 16, 16), dtype=np.float32)
    masks = (images > 0.5).astype(np.uint8)
    state = {"tool": "box", "margin": 5.5, "pts": np.arange(12, dtype=np.int32).reshape(4, 3),
             "nested": {"ok": True, "vals": [np.float32(2.5), None]},
             "support_sets": {2: {"images": images, "labels": masks}},
             "prompts": {"boxes": [{"label": 1, "axis": 0, "slice": 5, "box": [1, 2, 30, 40]}]}}
    received = []
    c.register_state_provider("dummy", lambda: state, received.append)
    want_labels = np.array(c.source_labels())
    want_table = c.label_table.to_dict()

    target = tmp_path / "case1.medsamsession"
    monkeypatch.setattr(session_files, "ask_save_session_path", lambda parent, suggested: str(target))
    win.actions["save_session"].trigger()
    c.wait_idle(60)
    qtbot.waitUntil(lambda: (target / "session.json").exists(), timeout=10000)
    saved = load_session(target)
    assert np.array_equal(saved.labels, want_labels)
    assert sorted(saved.support_sets) == [2] and np.array_equal(saved.support_sets[2]["images"], images)
    assert saved.prompts["boxes"][0]["box"] == [1, 2, 30, 40]

    # change everything, then open the session again through the menu
    c.set_labels(np.zeros(c.volume.shape, np.uint16))
    c.rename_label(2, "something else")
    c.set_window(0.0, 10.0)
    monkeypatch.setattr(session_files, "ask_open_session_path", lambda parent: str(target))
    win.actions["open_session"].trigger()
    qtbot.waitUntil(lambda: len(received) == 1, timeout=20000)
    c.wait_idle(60)
    assert np.array_equal(c.source_labels(), want_labels)
    assert c.label_table.to_dict() == want_table
    assert c.label_table.get(2).name == "kidney"
    assert c.window_bounds == (-350.0, 50.0)
    assert c.current_slice(0) == 7
    got = received[0]
    assert got["tool"] == "box" and got["margin"] == 5.5
    assert got["pts"].dtype == np.int32 and np.array_equal(got["pts"], state["pts"])
    assert got["nested"] == {"ok": True, "vals": [2.5, None]}
    assert np.array_equal(got["support_sets"][2]["labels"], masks)
    assert got["prompts"] == state["prompts"]
    assert mgr.session_path == target

    # `medsam-gui --session PATH` goes through build_app -> session_files.open_session
    c.set_labels(np.zeros(c.volume.shape, np.uint16))
    session_files.open_session(mgr, str(target))
    qtbot.waitUntil(lambda: len(received) == 2, timeout=20000)
    c.wait_idle(60)
    assert np.array_equal(c.source_labels(), want_labels)


def test_moved_scan_asks_for_location_and_other_scan_is_refused(win, c, mgr, qtbot, tmp_path, monkeypatch,
                                                                data_dir):
    from medsam_gui.gui import session_files

    (tmp_path / "a").mkdir()
    scan = tmp_path / "a" / "ct.nii.gz"
    shutil.copy(config.demo_scan_path(), scan)
    c.open_scan(scan, confirm=False)
    c.wait_idle(60)
    shape = c.display_labels().shape
    c.write_slice_mask(0, 9, _disk(shape[1:], 40, 70, 9), 1)
    want = np.array(c.source_labels())
    sess = tmp_path / "moved.medsamsession"
    session_files.save_session_as(mgr, sess)
    c.wait_idle(60)
    assert (sess / "session.json").exists()

    (tmp_path / "b").mkdir()
    moved = tmp_path / "b" / "ct_renamed.nii.gz"
    shutil.move(scan, moved)
    c.open_scan(config.demo_scan_path(), confirm=False)
    c.wait_idle(60)
    asked = []

    def locate(parent, session, message):
        asked.append(message)
        return str(moved)

    monkeypatch.setattr(session_files, "ask_scan_location", locate)
    session_files.open_session(mgr, sess)
    qtbot.waitUntil(lambda: c.volume is not None and Path(c.volume.path) == moved, timeout=20000)
    c.wait_idle(60)
    assert len(asked) == 1 and str(scan) in asked[0] and "not at" in asked[0]
    assert np.array_equal(c.source_labels(), want)
    assert mgr.snapshot().scan.path == str(moved)

    # a different scan chosen as "the moved scan" is refused with a clear message
    os.remove(moved)
    monkeypatch.setattr(session_files, "ask_scan_location", lambda parent, session, message: str(data_dir / HIPPO))
    volume_before = c.volume
    session_files.open_session(mgr, sess)
    qtbot.waitUntil(lambda: c.last_error is not None, timeout=20000)
    c.wait_idle(60)
    assert "not the scan this session was made on" in c.last_error
    assert "Choose the original scan" in c.last_error
    assert c.volume is volume_before and np.array_equal(c.source_labels(), want)


def test_autosave_disk_full_shows_notice_retries_and_keeps_labels(win, c, mgr, qtbot, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(core_session, "_write_file", full)
    shape = c.display_labels().shape
    c.write_slice_mask(0, 11, _disk(shape[1:], 60, 50, 10), 2)
    want = np.array(c.source_labels())
    qtbot.waitUntil(lambda: mgr.notice.isVisible(), timeout=8000)
    assert "disk is full" in mgr.notice.toolTip() and "retrying" in mgr.notice.toolTip()
    assert "Autosave failed" in win.status_text()
    assert np.array_equal(c.source_labels(), want)  # annotation untouched
    failed = mgr.autosave.stats["saves_failed"]
    qtbot.waitUntil(lambda: mgr.autosave.stats["saves_failed"] > failed, timeout=8000)  # retried
    monkeypatch.undo()  # space again: the retry lands and the notice goes
    qtbot.waitUntil(lambda: not mgr.notice.isVisible(), timeout=8000)
    s = _wait_saved_equal(qtbot, mgr, c)
    assert np.array_equal(s.labels, want)


def _crash_slot(root: Path, scan: Path, label_value: int = 3) -> Path:
    """A subprocess autosaves a session for ``scan`` into ``root`` and dies without closing."""
    code = (
        "import os, sys, numpy as np\n"
        "from medsam_gui.io import load_volume\n"
        "from medsam_gui.core.session import Session\n"
        "from medsam_gui.core.autosave import AutosaveManager\n"
        "v = load_volume(sys.argv[2]); lab = np.zeros(v.shape, np.uint16)\n"
        f"lab[10, 20:30, 20:35] = {label_value}\n"
        "s = Session.from_volume(v, lab, label_table={'labels': [{'value': %d, 'name': 'tumour',"
        " 'color': [1, 0, 0, 1]}]}, window=(-500.0, 500.0))\n" % label_value
        + "m = AutosaveManager(sys.argv[1], interval_s=0.05)\n"
        "m.mark_dirty(s.snapshot)\n"
        "assert m.flush(20)\n"
        "print(m.slot)\n"
        "os._exit(0)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code, str(root), str(scan)], capture_output=True, text=True,
                         timeout=60, env=env, cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


def test_recovery_offer_later_discard_restore(win, c, mgr, qtbot):
    from medsam_gui.gui import recovery_dialog

    root = mgr.autosave.root
    slot = _crash_slot(root, config.demo_scan_path())

    def offer_and_click(button):
        dlg = recovery_dialog.offer_recovery(mgr)  # the real, non-blocking dialog
        assert dlg is not None and mgr.recovery_dialog is dlg and dlg.isVisible()
        rows = dlg.rows()
        assert [dlg.table.item(0, i).text() for i in range(4)] == rows[0]
        getattr(dlg, f"{button}_button").click()
        assert mgr.recovery_dialog is None and mgr.recovery_choices[-1] == button
        return rows

    rows = offer_and_click("later")
    assert rows == [["example_ct_sm", rows[0][1], "150 (label 3: 150)", str(config.demo_scan_path())]]
    assert time.strftime("%Y-%m-%d") in rows[0][1]
    assert slot.exists()  # kept for later

    offer_and_click("discard")
    assert not slot.exists() and recovery_dialog.recoverable(mgr) == [] and recovery_dialog.offer_recovery(mgr) is None

    slot = _crash_slot(root, config.demo_scan_path(), label_value=4)
    offer_and_click("restore")
    qtbot.waitUntil(lambda: int(c.source_labels().max()) == 4, timeout=20000)
    c.wait_idle(60)
    lab = np.array(c.source_labels())
    assert np.count_nonzero(lab) == 150 and np.all(lab[10, 20:30, 20:35] == 4)
    assert c.label_table.get(4).name == "tumour" and c.window_bounds == (-500.0, 500.0)
    assert c.has_unsaved_labels()  # recovered work is in no file yet
    # the crashed slot goes once this instance has autosaved the restored work
    qtbot.waitUntil(lambda: not slot.exists(), timeout=10000)
    _wait_saved_equal(qtbot, mgr, c)


def test_unlimited_undo_300_edits_of_every_kind(win, c):
    from medsam_gui.gui.undo import HistoryDeque, history_budget

    layer = c.labels_layer
    assert isinstance(layer._undo_history, HistoryDeque) and history_budget(layer) is not None
    shape = c.display_labels().shape
    layer.visible = False  # 900 edits / undos / redos without redrawing each one
    try:
        _undo_300(c, layer, shape)
    finally:
        layer.visible = True


def _undo_300(c, layer, shape):
    rng = np.random.default_rng(7)
    digests = [_digest(layer.data)]
    for i in range(300):
        z = int(rng.integers(0, shape[0]))
        cy, cx = int(rng.integers(8, shape[1] - 8)), int(rng.integers(8, shape[2] - 8))
        kind = i % 3
        if kind == 0:  # model edit
            c.write_slice_mask(0, z, _disk(shape[1:], cy, cx, int(rng.integers(2, 7))), 1 + i % 4)
        elif kind == 1:  # napari brush
            layer.paint((z, cy, cx), 1 + i % 4)
        else:  # a propagation / UniverSeg acceptance: several slices, ONE step
            with c.edit_group():
                for dz in range(3):
                    c.write_slice_mask(0, min(z + dz, shape[0] - 1), _disk(shape[1:], cy, cx, 4), 5)
        digests.append(_digest(layer.data))
    assert len(set(digests)) > 290  # (nearly) every edit changed something
    assert len(layer._undo_history) == 300
    for i in range(300, 0, -1):
        assert _digest(layer.data) == digests[i]
        c.undo()
    assert _digest(layer.data) == digests[0] and not np.any(layer.data)
    c.undo()  # nothing left: no-op
    for i in range(1, 301):
        c.redo()
        assert _digest(layer.data) == digests[i]


def test_undo_budget_drops_oldest_and_survives_new_scan(win, c, mgr, data_dir):
    from medsam_gui.gui.undo import HistoryDeque, history_budget, history_nbytes, step_nbytes

    layer = c.labels_layer
    shape = c.display_labels().shape
    mask = _disk(shape[1:], 50, 60, 10)
    c.write_slice_mask(0, 0, mask, 1)
    one = step_nbytes(layer._undo_history[-1])
    c.set_labels(np.zeros(c.volume.shape, np.uint16))  # resets history: still budgeted
    assert isinstance(layer._undo_history, HistoryDeque) and len(layer._undo_history) == 0
    mgr.set_undo_budget(int(10.5 * one))
    try:
        budget = history_budget(layer)
        dropped0 = budget.dropped_steps
        digests = [_digest(layer.data)]
        for z in range(20):
            c.write_slice_mask(0, z, mask, 1)
            digests.append(_digest(layer.data))
        assert len(layer._undo_history) == 10
        assert budget.dropped_steps - dropped0 == 10
        assert history_nbytes(layer) <= budget.budget_bytes
        for _ in range(15):
            c.undo()
        # the newest 10 edits were undone; the oldest 10 could not be (dropped)
        assert _digest(layer.data) == digests[10]
        assert np.all(np.take(layer.data, range(10), axis=0)[:, mask] == 1)
        # redo history counts against the budget too, and redo still works
        assert len(layer._redo_history) == 10 and history_nbytes(layer) <= budget.budget_bytes
        for _ in range(10):
            c.redo()
        assert _digest(layer.data) == digests[20]
        # a single step larger than the whole budget is still kept (the newest edit is undoable)
        mgr.set_undo_budget(one // 2)
        assert len(layer._undo_history) == 1
        c.undo()
        assert _digest(layer.data) == digests[19]
    finally:
        mgr.set_undo_budget(1 << 30)

    # another scan: the (possibly new) labels layer gets the budget again
    c.open_scan(data_dir / HIPPO, confirm=False)
    c.wait_idle(60)
    layer2 = c.labels_layer
    assert history_budget(layer2) is not None and history_budget(layer2).budget_bytes == 1 << 30
    assert isinstance(layer2._undo_history, HistoryDeque) and len(layer2._undo_history) == 0
    assert layer2._history_limit > 10**9
    n = layer2.data.shape[0]
    steps = sum(c.write_slice_mask(0, i % n, _disk(layer2.data.shape[1:], 10 + i // n, 10, 4), 1 + i % 2) > 0
                for i in range(120))
    assert steps == 120 and len(layer2._undo_history) == 120  # beyond napari's 100


def test_clean_quit_leaves_nothing_to_recover(app_window, qtbot, monkeypatch, tmp_path):
    w = app_window(demo=True, show=True)  # all panels, as the app has them
    c = w.controller
    m = w.panels.session
    assert m is not None  # installed by build_app
    m.autosave.interval_s = 0.2
    c.write_slice_mask(0, 10, _disk(c.display_labels().shape[1:], 40, 40, 6), 1)
    _wait_saved_equal(qtbot, m, c)
    slot = m.autosave.slot
    assert slot.exists() and list(slot.glob("snap-*"))
    monkeypatch.setattr(c, "confirm_discard", lambda what="": True)
    w.qt_window.close()  # what the window's close button does
    qtbot.waitUntil(lambda: not slot.exists(), timeout=10000)
    assert find_recoverable(config.sessions_dir()) == []
    assert not list(config.sessions_dir().iterdir())
