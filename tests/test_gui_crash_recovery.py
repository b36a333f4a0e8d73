"""Crash recovery end to end: the real app is SIGKILLed in the middle of annotating; the next
start offers the autosaved work and restores it voxel for voxel, losing at most 10 s of edits.

The child builds the app exactly as ``medsam-gui --demo`` does (``build_app(demo=True)``, all
panels, the session manager among them) under the same Xvfb display and a
temporary MEDSAM_GUI_HOME, paints through the controller (model edits and napari brush
strokes) every 0.25 s and logs each edit's time and the SHA-1 of the labels.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medsam_gui import config
from medsam_gui.core.session import load_session

pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parent.parent
MAX_LOSS_S = 10.0

CHILD = r"""
import hashlib, json, sys, time
import numpy as np
import medsam_gui.app as app
from napari.qt import get_qapp

qa = get_qapp()
w = app.build_app(demo=True, show=True)
c = w.controller
c.wait_idle(120)
log = open(sys.argv[1], "a")
log.write(json.dumps({"ready": time.time()}) + "\n"); log.flush()

def pump(sec):
    end = time.monotonic() + sec
    while time.monotonic() < end:
        qa.processEvents()
        time.sleep(0.01)

nz, ny, nx = c.display_labels().shape
yy, xx = np.mgrid[:ny, :nx]
rng = np.random.default_rng(0)
i = 0
while True:
    z = int(rng.integers(0, nz)); cy = int(rng.integers(10, ny - 10)); cx = int(rng.integers(10, nx - 10))
    if i % 3 == 2:
        c.labels_layer.paint((z, cy, cx), 1 + i % 3)  # a brush stroke
    else:
        c.write_slice_mask(0, z, (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(3, 9)) ** 2, 1 + i % 3)
    sha = hashlib.sha1(np.ascontiguousarray(c.source_labels()).tobytes()).hexdigest()
    log.write(json.dumps({"i": i, "t": time.time(), "sha1": sha}) + "\n"); log.flush()
    i += 1
    pump(0.25)
"""


def _read_log(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by the kill
            pass
    return out


def _snapshots(home: Path) -> list[Path]:
    return sorted((home / "data" / "sessions").glob("autosave-*/snap-*.medsamsession/session.json"))


def test_sigkill_mid_annotation_then_restore(qapp, qtbot, tmp_path, monkeypatch, _isolated_home):
    import medsam_gui.app as app

    home = Path(os.environ["MEDSAM_GUI_HOME"])
    assert home == Path(_isolated_home)
    log_path = tmp_path / "edits.jsonl"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ)  # same DISPLAY (Xvfb) and MEDSAM_GUI_HOME
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with open(tmp_path / "child.out", "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), str(log_path)], cwd=str(REPO), env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        # wait for the app to annotate and for autosaves of edits to land, then keep annotating
        while True:
            assert proc.poll() is None, (tmp_path / "child.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "the child app did not start annotating"
            edits = [e for e in _read_log(log_path) if "i" in e]
            if len(edits) >= 8 and len(_snapshots(home)) >= 1:
                break
            time.sleep(0.2)
        time.sleep(2.0 + (time.time() % 1.5))  # kill at an arbitrary moment mid-annotation
        t_kill = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    edits = [e for e in _read_log(log_path) if "i" in e]
    assert len(edits) >= 10

    # the next start, same MEDSAM_GUI_HOME: the crashed run's work is offered and restored
    w = app.build_app(show=True)
    try:
        c = w.controller
        mgr = w.panels.session
        qtbot.waitUntil(lambda: mgr.recovery_dialog is not None, timeout=10000)  # offered at start
        dlg = mgr.recovery_dialog
        assert dlg.isVisible() and len(dlg.items) == 1
        item, rows = dlg.items[0], dlg.rows()
        assert rows[0][0] == "example_ct_sm"
        assert rows[0][3] == str(config.demo_scan_path())
        assert item.label_voxels and rows[0][2].startswith(f"{sum(item.label_voxels.values()):,}")
        autosaved = load_session(item.session_path)  # read it before it is restored
        dlg.restore_button.click()
        qtbot.waitUntil(lambda: c.volume is not None and c.labels_layer is not None
                        and np.any(c.labels_layer.data), timeout=30000)
        c.wait_idle(60)
        restored = np.array(c.source_labels())

        # voxel for voxel what had been autosaved
        assert np.array_equal(restored, autosaved.labels)
        assert sum(item.label_voxels.values()) == int(np.count_nonzero(restored))
        assert c.volume.path == str(config.demo_scan_path())

        # ... which is the state after some edit k; edits after k are the lost ones
        sha = hashlib.sha1(np.ascontiguousarray(restored).tobytes()).hexdigest()
        ks = [e["i"] for e in edits if e["sha1"] == sha]
        assert ks, "the restored labels are not a state the child ever had"
        k = max(ks)
        lost = [e for e in edits if e["i"] > k]
        oldest_lost = min((e["t"] for e in lost), default=t_kill)
        print(f"{len(edits)} edits, restored the state after edit {k}; {len(lost)} lost, "
              f"the oldest {t_kill - oldest_lost:.2f} s before the kill")
        assert t_kill - oldest_lost <= MAX_LOSS_S
        # the crashed slot is gone once this instance autosaved the restored work
        qtbot.waitUntil(lambda: not item.slot.exists(), timeout=15000)
    finally:
        w.close(force=True)
