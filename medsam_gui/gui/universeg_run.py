"""The UniverSeg dock's runs: the model and its weights dialog, "Segment the rest", "Fill from
MedSAM boxes", progress, Cancel. The work itself is
:func:`medsam_gui.models.incontext_proposal.iter_plans` in ``controller.run_worker``.
"""

from __future__ import annotations

import time
from pathlib import Path

from qtpy.QtWidgets import QWidget

from ..core.support_set import SupportSlice
from ..errors import CheckpointError, MedsamGuiError
from .pending_run import PendingRunMixin
from .workers import set_bar_value

MODEL_NAME = "universeg_v1"


def make_weights_dialog(parent: QWidget | None, reason: str = ""):
    """The generic weights dialog for ``universeg_v1`` (download or choose a file)."""
    from .weights_dialog import WeightsDialog

    return WeightsDialog(parent, model_name=MODEL_NAME, reason=reason)


class RunMixin(PendingRunMixin):
    """Model and run part of :class:`~medsam_gui.gui.universeg_panel.UniversegPanel`."""

    # ------------------------------------------------------------------ model
    @property
    def model(self):
        return self._model

    def set_model(self, module) -> None:
        """Use ``module`` (a UniverSeg v1 ``nn.Module``, or any module with the same call
        signature) instead of loading the weights from the model manager."""
        self._model = module

    def load_model(self, path: str | Path | None = None):
        """Load UniverSeg v1 from ``path`` or the model manager's ``universeg_v1`` file (GUI thread,
        ~5 MiB). Returns the module; raises CheckpointError when the weights are missing/invalid."""
        from ..models.universeg import universeg_v1

        if path is None:
            from ..models import weights as manager

            path = manager.resolve(MODEL_NAME)
            if path is None:
                raise CheckpointError("UniverSeg weights (universeg_v1_nf64_ss64_STA.pt) are not installed.")
        self._model = universeg_v1(Path(path))
        return self._model

    def ensure_model(self, pending=None) -> bool:
        """True when a model is ready; otherwise tries the model manager's file, and when that
        fails opens the weights dialog (``pending`` runs once the weights are in)."""
        if self._model is not None:
            return True
        try:
            self.load_model()
            return True
        except CheckpointError as exc:
            reason = str(exc) if "not installed" not in str(exc) else \
                "UniverSeg needs its weights file before it can segment."
        self._pending = pending
        self.show_weights_dialog(reason)
        return False

    def show_weights_dialog(self, reason: str = ""):
        """Open the UniverSeg weights dialog (non-blocking); returns it."""
        if self._weights_dialog is not None:
            try:
                if self._weights_dialog.isVisible():
                    return self._weights_dialog
            except RuntimeError:  # the dialog's C++ object is gone
                pass
        return self._open_weights_dialog(make_weights_dialog(self, reason))

    def _on_weights_ready(self, path) -> None:
        try:
            self.load_model(path)
        except MedsamGuiError as exc:
            self.controller.show_error(exc, title="Could not load the UniverSeg weights")
            return
        self.controller.status(f"UniverSeg weights: {path}", 6000)
        self._start_pending()

    # ------------------------------------------------------------------ starting
    def _device(self) -> str:
        return self.device_combo.currentText() or "auto"

    def medsam_slices(self, label: int | None = None) -> list[int]:
        """Slices of ``label`` (default active) the MedSAM panel segmented on the view axis (its
        ``key_boxes``) where the label is drawn; [] without a MedSAM panel or a scan."""
        c = self.controller
        if self.medsam is None or c.volume is None:
            return []
        axis = self._axis()
        label = int(c.active_label if label is None else label)
        boxes = self.medsam.key_boxes(axis=axis, label=label)
        drawn = set(self.labeled(label, axis))
        return sorted(int(i) for i in boxes if int(i) in drawn)

    def fill_from_medsam(self) -> bool:
        """Segment the rest with the MedSAM-segmented slices of the active label as support
        (falls back to the support list when there are none). Returns True when a run started."""
        c = self.controller
        if c.volume is None:
            return False
        slices = self.medsam_slices()
        if not slices:
            c.status("No MedSAM boxes of the active label on this view: using the labeled slices.", 6000)
            return self.segment_rest(all_labels=False)
        axis, label, bounds = self._axis(), int(c.active_label), self._bounds()
        return self.segment_rest(all_labels=False, items=[self._make_item(i, axis, label, bounds) for i in slices])

    def segment_rest(self, all_labels: bool | None = None, items: list[SupportSlice] | None = None) -> bool:
        """Start a run (the "Segment the rest" button). ``all_labels`` None: the check box.
        Returns True when the run started (False: nothing to do, an error was shown, or the
        weights dialog opened and the run starts once the weights are in)."""
        c = self.controller
        if c.volume is None or self.running:
            return False
        if all_labels is None:
            all_labels = self.all_labels_check.isChecked()
        if not self.ensure_model(pending=lambda: self.segment_rest(all_labels, items)):
            return False
        self._fresh()
        try:
            return self._start(bool(all_labels), items)
        except MedsamGuiError as exc:
            c.show_error(exc, title="UniverSeg")
            return False
        finally:
            if self._proposal is None:  # no run: no (emptied) proposal layer left behind
                self._remove_layer()

    def _start(self, all_labels: bool, items: list[SupportSlice] | None) -> bool:
        from ..models import incontext as ic
        from ..models import incontext_proposal as icp

        c = self.controller
        self._discard_proposal(keep_layer=True)  # its layer is reused by this run (see _create_layer)
        axis = self._axis()
        vol, labels_now = c.display_volume(), c.display_labels()
        S = self.support_size_spin.value() or None
        ens = self.ensemble_spin.value()
        dev = ic.resolve_device(self._device())
        if all_labels:
            values = icp.labels_present(labels_now)
            if not values:
                raise ic.InContextError("No label is drawn yet: draw the structures on a few slices first.")
            labels_copy, support = labels_now.copy(), None
        else:
            values = [int(c.active_label)]
            labels_copy, support = None, self.support_set(items)
        plans = icp.plan_labels(labels_now, values, axis, self.z_range())
        if not plans:
            raise ic.InContextError("Every slice in the range is already labeled: extend the range (from/to "
                                    "or Whole scan) to segment more slices.")
        slice_hw = tuple(s for a, s in enumerate(vol.shape) if a != axis)
        self._proposal = icp.Proposal.from_plans(c.volume, axis, plans, slice_hw)
        grand = sum(len(p.targets) for p in plans)
        state = self._cancel_state = {"cancel": False}
        self._t0 = time.perf_counter()
        self.last_run = {"labels": [p.value for p in plans], "targets": {p.value: list(p.targets) for p in plans},
                         "support_slices": list(support.indices) if support is not None else None,
                         "support_size": S, "ensemble": ens, "device": str(dev), "axis": axis,
                         "all_labels": all_labels, "total": grand, "seconds": None}
        work = icp.iter_plans(vol, labels_copy, plans, support=support, cancel=lambda: state["cancel"],
                              model=self._model, bounds=self._bounds(), support_size=S,
                              batch_size=self.batch_spin.value() or None, device=dev, ensemble=ens, axis=axis,
                              on_notice=lambda m: self.notice.emit(f"UniverSeg: {m}"))
        self._create_layer()
        self.progress.setRange(0, grand)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        what = "all labels" if all_labels else f"label {plans[0].value}"
        self._handle = handle = c.run_worker(work, on_yield=self._on_batch, on_done=self._on_done,
                                             on_error=self._on_error,
                                             description=f"UniverSeg: segmenting {grand} slice(s) of {what}…")
        # the status bar's Cancel ends the handle without going through self.cancel()
        handle.add_done_callback(lambda h: self._check_handle() if self._handle is h else None)
        self._rebuild_proposal_list()
        self._update_buttons()
        return True

    # ------------------------------------------------------------------ progress
    def _on_batch(self, payload) -> None:
        v, ev, done, total = payload
        prop = self._proposal
        if prop is None or self._handle is None:
            return
        prop.add_batch(v, ev)
        for i in ev.indices:
            self._paint_layer_slice(int(i))
        if self._layer is not None:
            # redraw only when a changed slice is on screen: a redraw of the canvas costs the GUI
            # thread ~50 ms per batch; other slices are read from the data when the user goes there
            if self._on_screen(prop.axis, ev.indices):
                self._layer.refresh()
            else:
                self._layer_stale = True
        self._handle.set_progress(done, total)
        set_bar_value(self.progress, done, total)
        self._rebuild_proposal_list()

    def _on_notice(self, message: str) -> None:
        """GUI thread: an out-of-memory fallback (UniverSeg's or MedSAM's) for the status bar."""
        self.last_notice = message
        self.controller.status(message, 15000)

    def _on_done(self, _result) -> None:
        self._finish_run("done")

    def _on_error(self, exc) -> None:
        self._finish_run("error")
        self.controller.show_error(exc, title="UniverSeg failed")

    def _check_handle(self) -> None:
        h = self._handle
        if h is not None and h.finished:
            self._finish_run("cancelled" if h.cancelled else ("error" if h.error is not None else "done"))

    def cancel(self) -> None:
        """Stop the run after the current batch; the finished slices stay proposed."""
        h = self._handle
        if h is None or h.finished:
            return
        self._cancel_state["cancel"] = True
        h.cancel()
        self._finish_run("cancelled")

    def _finish_run(self, how: str) -> None:
        if self._handle is None:
            return
        self._handle = None
        if self._layer_stale and self._layer is not None:
            self._layer.refresh()  # thumbnails and anything drawn from slices painted off screen
        self._layer_stale = False
        self.progress.setVisible(False)
        if how != "done":
            self._cancel_state["cancel"] = True
        self.last_run["seconds"] = time.perf_counter() - self._t0
        prop = self._proposal
        if prop is not None:
            if how == "error":
                self._discard_proposal()
            else:
                prop.finish(how)
                if not prop.indices:
                    self._discard_proposal()
                    self.controller.status("UniverSeg cancelled before any slice was finished; nothing to review.",
                                           8000)
                elif how == "cancelled":
                    self.controller.status(f"UniverSeg cancelled: {len(prop.indices)} of {len(prop.planned)} "
                                           "slices proposed — accept or reject them.", 10000)
                else:
                    self.controller.status(f"UniverSeg proposed {len(prop.indices)} slices in "
                                           f"{self.last_run['seconds']:.1f} s — review, then Accept or Reject.",
                                           10000)
        self._rebuild_proposal_list()
        self._update_buttons()
        self.run_finished.emit(how)

    def shutdown(self) -> None:
        """Cancel a running run (the controller's shutdown hook)."""
        if self.running:
            self.cancel()
