"""Quitting the real app while MedSAM embeds a slice exits cleanly (issue 12).

A child process runs ``medsam_gui.app.run_app(demo=True)`` (what ``medsam-gui --demo`` does)
under the test's Xvfb display, loads random-weight ViT-B MedSAM weights through the MedSAM
panel and closes the main window the moment the background embedding thread starts its encoder
pass. Before the fix the interpreter's exit found that thread inside torch and aborted with
"terminate called without an active exception" (exit status 134).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medsam_fixtures import vit_b_checkpoint

pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import os, sys, threading
import torch
torch.set_num_threads(2)
from qtpy.QtCore import QTimer
import medsam_gui.app as app

checkpoint = sys.argv[1]
real_build = app.build_app

def build(*args, **kwargs):  # drive the window run_app builds
    w = real_build(*args, **kwargs)
    QTimer.singleShot(0, lambda: start(w))
    return w

def start(w):
    started = []  # the signal comes from the embedding thread: only record it there
    w.panels.medsam.service.started.connect(started.append)

    def poll():
        if not started:
            return
        timer.stop()
        alive = sorted(t.name for t in threading.enumerate() if t.name.startswith("medsam-"))
        print("closing while embedding slice", started[0], alive, flush=True)
        w.qt_window.close()  # what the window's close button does

    timer = QTimer(w.qt_window)
    timer.timeout.connect(poll)
    timer.start(20)
    w.panels.medsam.load_engine(checkpoint)

QTimer.singleShot(240000, lambda: (print("timed out", flush=True), os._exit(3)))
app.build_app = build
code = app.run_app(demo=True)
print("run_app returned", code, flush=True)
sys.exit(code)
"""


def test_quit_while_medsam_embeds_exits_cleanly(tmp_path):
    checkpoint = vit_b_checkpoint()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    home = tmp_path / "home"
    env = dict(os.environ, MEDSAM_GUI_HOME=str(home),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    assert env.get("DISPLAY"), "pytest-xvfb gives the child a display"
    out = subprocess.run([sys.executable, str(script), str(checkpoint)], cwd=str(REPO), env=env,
                         capture_output=True, text=True, timeout=300)
    assert "closing while embedding slice" in out.stdout, out.stdout + out.stderr
    assert "medsam-embedding-scheduler" in out.stdout  # the encoder pass was running at the close
    assert "terminate called" not in out.stderr, out.stderr
    assert out.returncode == 0, out.stdout + out.stderr
    # the clean close also removed this run's autosave slot (nothing to recover next time)
    sessions = home / "data" / "sessions"
    assert not sessions.exists() or not any(sessions.glob("autosave-*")), list(sessions.iterdir())
