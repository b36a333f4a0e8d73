"""gui.pending_run: a run asked for while the weights are missing starts once the weights dialog
delivers them (on the next event-loop turn, once), and is dropped when the dialog is closed
without weights; ``running`` follows the run's worker handle."""

from __future__ import annotations

import pytest
from qtpy.QtCore import QObject, Signal

from medsam_gui.gui.pending_run import PendingRunMixin

pytestmark = pytest.mark.gui


class FakeDialog(QObject):
    """The two signals and ``open`` of a WeightsDialog."""

    weights_ready = Signal(str)
    rejected = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.opened = 0

    def open(self) -> None:
        self.opened += 1


class Dock(PendingRunMixin):
    def __init__(self) -> None:
        self._handle = None
        self._pending = None
        self._weights_dialog = None
        self.installed: list[str] = []
        self.runs = 0

    def run(self) -> None:
        self.runs += 1

    def _on_weights_ready(self, path) -> None:
        self.installed.append(path)
        self._start_pending()


class Handle:
    finished = False


def test_the_pending_run_starts_once_after_the_weights_are_in(qtbot):
    dock, dlg = Dock(), FakeDialog()
    dock._pending = dock.run
    assert dock._open_weights_dialog(dlg) is dlg and dock.weights_dialog is dlg and dlg.opened == 1
    dlg.weights_ready.emit("/w/model.pt")
    assert dock.installed == ["/w/model.pt"] and dock.runs == 0  # not inside the dialog's signal
    qtbot.waitUntil(lambda: dock.runs == 1, timeout=2000)
    dlg.weights_ready.emit("/w/model.pt")  # weights again: no run is waiting any more
    qtbot.wait(50)
    assert dock.runs == 1 and dock._pending is None


def test_closing_the_dialog_drops_the_pending_run(qtbot):
    dock, dlg = Dock(), FakeDialog()
    dock._pending = dock.run
    dock._open_weights_dialog(dlg)
    dlg.rejected.emit()
    assert dock._pending is None
    dlg.weights_ready.emit("/w/model.pt")
    qtbot.wait(50)
    assert dock.runs == 0 and dock.installed == ["/w/model.pt"]


def test_running_follows_the_handle():
    dock, handle = Dock(), Handle()
    assert not dock.running
    dock._handle = handle
    assert dock.running
    handle.finished = True
    assert not dock.running
