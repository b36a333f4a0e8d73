"""A dock's run that waits for its weights: a run asked for while the weights are missing is kept
while the weights dialog is open and starts once the weights are in; closing the dialog without
weights drops it. Used by the Auto-segment and UniverSeg docks."""

from __future__ import annotations

from qtpy.QtCore import QTimer


class PendingRunMixin:
    """Run state shared by the model docks. The dock sets ``_handle`` (its run's worker handle, or
    None), ``_pending`` (the callable to start once the weights are in, or None) and
    ``_weights_dialog`` (None) in ``__init__``, and defines ``_on_weights_ready(path)``, which ends
    with :meth:`_start_pending`."""

    @property
    def running(self) -> bool:
        return self._handle is not None and not self._handle.finished

    @property
    def weights_dialog(self):
        """The last weights dialog opened, or None."""
        return self._weights_dialog

    def _open_weights_dialog(self, dlg):
        """Open ``dlg`` (a :class:`~medsam_gui.gui.weights_dialog.WeightsDialog`, non-blocking):
        its weights go to ``_on_weights_ready``, closing it drops the pending run. Returns ``dlg``."""
        dlg.weights_ready.connect(self._on_weights_ready)
        dlg.rejected.connect(self._drop_pending)
        self._weights_dialog = dlg
        dlg.open()
        return dlg

    def _drop_pending(self) -> None:
        self._pending = None

    def _start_pending(self) -> None:
        """Start the pending run, if any, on the next turn of the event loop."""
        pending, self._pending = self._pending, None
        if pending is not None:
            QTimer.singleShot(0, pending)
