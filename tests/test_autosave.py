"""Autosave: rate limit, coalescing, non-blocking writes, failures, crash recovery (SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsam_gui.core import autosave as autosave_mod
from medsam_gui.core.autosave import AutosaveManager
from medsam_gui.core.autosave_slots import discard, find_recoverable, slot_owner_alive
from medsam_gui.core.session import Session, load_session
from medsam_gui.core.volume import Volume
from medsam_gui.errors import ExportError, SessionError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hippo(data_dir):
    d = data_dir / "msd_hippocampus"
    img = sitk.ReadImage(str(d / "hippocampus_003_image.nii.gz"))
    vol = Volume(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection(),
                 path=str(d / "hippocampus_003_image.nii.gz"), name="hippocampus_003_image.nii.gz", modality="MR")
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "hippocampus_003_label.nii.gz"))).astype(np.uint8)
    assert set(np.unique(seg)) == {0, 1, 2}
    return vol, seg


class Editor:
    """Stands in for the GUI: a label map it edits and a snapshot function copying it."""

    def __init__(self, vol, seg):
        self.session = Session.from_volume(vol, seg, label_table={"labels": []})
        self.version = 0
        self.snap_threads = []

    def edit(self):
        self.version += 1
        z = self.version % self.session.labels.shape[0]
        self.session.labels[z, 0, 0] = 3
        self.session.extra["version"] = self.version

    def snapshot(self):
        self.snap_threads.append(threading.current_thread().name)
        return self.session.snapshot()


def _saved_version(mgr):
    return load_session(mgr.last_saved_path).extra["version"]


def _wait(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_slot_lock_and_own_slot_not_offered(tmp_path, hippo):
    mgr = AutosaveManager(tmp_path, interval_s=0.2)
    try:
        assert mgr.slot.parent == tmp_path and mgr.slot.name.startswith("autosave-")
        owner = json.loads((mgr.slot / "owner.lock").read_text())
        assert owner["pid"] == os.getpid() and owner["hostname"] and owner["start_time"] > 0
        assert slot_owner_alive(mgr.slot)
        ed = Editor(*hippo)
        ed.edit()
        mgr.mark_dirty(ed.snapshot)
        assert _wait(lambda: mgr.saves_completed == 1)
        assert find_recoverable(tmp_path) == [] and mgr.recoverable() == []
        with pytest.raises(SessionError, match="still running"):
            discard(mgr.slot)
    finally:
        mgr.close(clean=True)
    assert not mgr.slot.exists()


def test_default_root_is_user_data_dir_not_scan_folder(hippo, _isolated_home):
    mgr = AutosaveManager(interval_s=0.1)
    try:
        from medsam_gui.config import sessions_dir

        assert mgr.slot.parent == sessions_dir() and str(mgr.slot).startswith(str(_isolated_home))
        ed = Editor(*hippo)
        scan_dir = Path(ed.session.scan.path).parent
        before = sorted(os.listdir(scan_dir))
        ed.edit()
        mgr.mark_dirty(ed.snapshot)
        assert mgr.flush(5)
        assert sorted(os.listdir(scan_dir)) == before
        assert mgr.last_saved_path.parent == mgr.slot
    finally:
        mgr.close()


def test_rate_limit_poll_and_flush(tmp_path, hippo):
    mgr = AutosaveManager(tmp_path, interval_s=0.2)
    ed = Editor(*hippo)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:  # a burst of edits for 0.5 s
            ed.edit()
            mgr.mark_dirty(ed.snapshot)
            time.sleep(0.005)
        # at most one snapshot per interval: 0.5 s / 0.2 s -> 3 (+1 slack for timer jitter)
        assert 2 <= mgr.snapshots_taken <= 4
        assert set(ed.snap_threads) == {threading.current_thread().name}  # taken on the caller's thread
        assert 0.0 < mgr.due_in() <= 0.2
        last = ed.version
        assert _wait(lambda: mgr.poll(), 1.0)  # the GUI timer picks up the trailing edit
        assert mgr.due_in() is None
        assert mgr.flush(5)
        assert _saved_version(mgr) == last
        assert np.array_equal(load_session(mgr.last_saved_path).labels, ed.session.labels)
        assert len(list(mgr.slot.glob("snap-*"))) <= 2
    finally:
        mgr.close()


def test_worker_snapshots_without_timer(tmp_path, hippo):
    mgr = AutosaveManager(tmp_path, interval_s=0.2, snapshot_in_worker=True)
    ed = Editor(*hippo)
    try:
        ed.edit()
        mgr.mark_dirty(ed.snapshot)
        ed.edit()
        t_change = time.monotonic()
        mgr.mark_dirty(ed.snapshot)  # too soon: taken later by the worker
        assert _wait(lambda: mgr.last_saved_path is not None and _saved_version(mgr) == 2, 3.0)
        latency = time.monotonic() - t_change
        assert latency < 1.0  # interval 0.2 s + write time, far inside the 10 s guarantee
        assert "medsam-autosave" in ed.snap_threads
    finally:
        mgr.close()


def test_writes_never_block_and_are_coalesced(tmp_path, hippo, monkeypatch):
    real_save = autosave_mod.save_session
    written = []

    def slow_save(snap, folder, **kw):
        time.sleep(0.4)
        written.append(snap.extra["version"])
        return real_save(snap, folder, **kw)

    monkeypatch.setattr(autosave_mod, "save_session", slow_save)
    mgr = AutosaveManager(tmp_path, interval_s=0.05)
    ed = Editor(*hippo)
    try:
        worst = 0.0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            ed.edit()
            t = time.monotonic()
            mgr.mark_dirty(ed.snapshot)
            worst = max(worst, time.monotonic() - t)
            time.sleep(0.01)
        assert worst < 0.2  # a 0.4 s write never blocks the caller
        assert mgr.flush(10)
        taken = mgr.snapshots_taken
        assert taken >= 8
        assert mgr.snapshots_coalesced >= 4
        assert len(written) <= 5 < taken  # only the newest pending snapshot gets written
        assert written == sorted(written) and written[-1] == ed.version
        assert _saved_version(mgr) == ed.version
    finally:
        mgr.close()


def test_write_failures_reported_and_retried(tmp_path, hippo, monkeypatch):
    from medsam_gui.core import session as session_mod

    real_write = session_mod._write_file
    fail = {"left": 2}

    def disk_full(path, data):
        if fail["left"] > 0:
            fail["left"] -= 1
            import errno

            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(session_mod, "_write_file", disk_full)
    errors = []
    saved = []
    mgr = AutosaveManager(tmp_path, interval_s=0.15, on_error=errors.append, on_saved=saved.append)
    ed = Editor(*hippo)
    labels_before = ed.session.labels.copy()
    try:
        ed.edit()
        expected = ed.session.labels.copy()
        mgr.mark_dirty(ed.snapshot)  # never raises
        assert _wait(lambda: len(errors) >= 1, 3)
        assert isinstance(errors[0], ExportError) and "disk is full" in str(errors[0])
        assert np.array_equal(ed.session.labels, expected)  # the in-memory annotation is untouched
        assert not np.array_equal(expected, labels_before)
        assert _wait(lambda: mgr.saves_completed == 1, 5)  # retried each interval until it works
        assert len(errors) == 2 and mgr.saves_failed == 2 and saved == [mgr.last_saved_path]
        assert np.array_equal(load_session(mgr.last_saved_path).labels, expected)
        assert [p.name for p in mgr.slot.iterdir() if p.name.startswith(".")] == []  # no temp leftovers

        # flush reports a failure instead of raising
        fail["left"] = 100
        ed.edit()
        mgr.mark_dirty(ed.snapshot)
        assert mgr.flush(5) is False
        assert _saved_version(mgr) == 1
    finally:
        fail["left"] = 0
        mgr.close()


def test_bad_snapshot_fn_is_reported(tmp_path):
    errors = []
    mgr = AutosaveManager(tmp_path, interval_s=0.1, on_error=errors.append)
    try:
        mgr.mark_dirty(lambda: 1 / 0)
        mgr.mark_dirty(lambda: "not a session")
        time.sleep(0.12)
        mgr.poll()
        assert [type(e) for e in errors] == [ZeroDivisionError, TypeError]
        assert mgr.saves_completed == 0
    finally:
        mgr.close()


def test_unwritable_root_disables_autosave_without_raising(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    errors = []
    mgr = AutosaveManager(blocker / "sessions", interval_s=0.1, on_error=errors.append)
    assert not mgr.enabled and len(errors) == 1 and "Autosave is off" in str(errors[0])
    mgr.mark_dirty(lambda: None)
    assert mgr.flush(1) is False
    mgr.close()


def test_unclean_close_is_offered_clean_close_is_not(tmp_path, hippo):
    ed = Editor(*hippo)
    kept = AutosaveManager(tmp_path, interval_s=5.0)
    ed.edit()
    kept.mark_dirty(ed.snapshot)
    ed.edit()
    kept.mark_dirty(ed.snapshot)  # inside the interval: only flushed by close(clean=False)
    kept.close(clean=False)
    gone = AutosaveManager(tmp_path, interval_s=5.0)
    gone.mark_dirty(ed.snapshot)
    gone.close(clean=True)
    assert not gone.slot.exists()
    empty = AutosaveManager(tmp_path, interval_s=5.0)
    empty.close(clean=False)  # never dirty: nothing to offer, removed on listing

    found = find_recoverable(tmp_path)
    assert [r.slot for r in found] == [kept.slot]
    rec = found[0]
    assert rec.scan_name == "hippocampus_003_image.nii.gz" and rec.owner_pid == os.getpid()
    assert rec.label_voxels == ed.session.label_voxel_counts()
    assert abs(rec.saved_at - time.time()) < 60
    assert rec.load().extra["version"] == 2
    assert not empty.slot.exists()
    discard(rec)
    assert find_recoverable(tmp_path) == [] and not kept.slot.exists()
    with pytest.raises(SessionError, match="not an autosave"):
        discard(tmp_path)


def test_damaged_newest_snapshot_falls_back_to_older(tmp_path, hippo):
    ed = Editor(*hippo)
    mgr = AutosaveManager(tmp_path, interval_s=0.0)
    ed.edit()
    mgr.mark_dirty(ed.snapshot)
    assert mgr.flush(5)
    ed.edit()
    mgr.mark_dirty(ed.snapshot)
    assert mgr.flush(5)
    mgr.close(clean=False)
    snaps = sorted(mgr.slot.glob("snap-*"))
    assert len(snaps) == 2
    labels = snaps[-1] / "labels.npz"
    labels.write_bytes(labels.read_bytes()[:100])  # newest one truncated
    (rec,) = find_recoverable(tmp_path)
    assert rec.session_path == snaps[0]
    assert rec.load().extra["version"] == 1


CHILD = textwrap.dedent(r"""
    import sys, time
    import numpy as np
    import SimpleITK as sitk
    from medsam_gui.core.autosave import AutosaveManager
    from medsam_gui.core.session import Session
    from medsam_gui.core.volume import Volume

    root, image, label, mode = sys.argv[1:5]
    img = sitk.ReadImage(image)
    vol = Volume(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection(),
                 path=image, name="hippo")
    seg = sitk.GetArrayFromImage(sitk.ReadImage(label)).astype(np.uint8)
    seg[0, 0, 0] = 7  # an edit made in this session
    session = Session.from_volume(vol, seg)
    mgr = AutosaveManager(root, interval_s=0.2)
    mgr.mark_dirty(session.snapshot)
    while mgr.saves_completed < 1:
        time.sleep(0.01)
    if mode == "clean":
        mgr.close(clean=True)
        print("closed", flush=True)
        sys.exit(0)
    print("saved", mgr.slot, flush=True)
    time.sleep(120)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_app_is_recovered(tmp_path, hippo, data_dir):
    d = data_dir / "msd_hippocampus"
    args = [str(tmp_path), str(d / "hippocampus_003_image.nii.gz"), str(d / "hippocampus_003_label.nii.gz")]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    killed = subprocess.Popen([sys.executable, "-c", CHILD, *args, "crash"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = killed.stdout.readline()
        assert line.startswith("saved"), killed.stderr.read()
        slot = Path(line.split(" ", 1)[1].strip())
        assert find_recoverable(tmp_path) == []  # still running: not offered
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
    clean = subprocess.run([sys.executable, "-c", CHILD, *args, "clean"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert clean.returncode == 0 and clean.stdout.strip() == "closed", clean.stderr

    found = find_recoverable(tmp_path)
    assert len(found) == 1 and found[0].slot == slot and found[0].owner_pid == killed.pid
    seg = hippo[1].copy()
    seg[0, 0, 0] = 7
    expected = {int(v): int(c) for v, c in zip(*np.unique(seg, return_counts=True)) if v}
    assert found[0].label_voxels == expected and set(expected) == {1, 2, 7}
    restored = found[0].load()
    assert np.array_equal(restored.labels, seg)
    assert restored.scan.fingerprint == hippo[0].fingerprint()
    assert [p.name for p in tmp_path.iterdir()] == [slot.name]  # the clean slot left nothing
